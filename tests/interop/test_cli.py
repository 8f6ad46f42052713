"""The command line: check-config, import and verify."""

from __future__ import annotations

import re
import shutil

import pydicom
import pytest

import dicomnet as net
from harness import REPO, Outpost, run_outpost

BAD_CONFIG = """\
[dicom]
ae_title = "THIS-AE-TITLE-IS-TOO-LONG"
port = 0
max_asociations = 8
accept_unknown_callers = "sometimes"

[[dicom.remote]]
ae_title = "CT1"
port = 104

[storage]
durability = "fast"
min_free_mb = -1
"""

# (key, what the message says): one line each, as "FILE: key: message".
BAD_CONFIG_PROBLEMS = [
    ("dicom.ae_title", 'AE title "THIS-AE-TITLE-IS-TOO-LONG" is 25 characters long; '
                       "at most 16 are allowed"),
    ("dicom.port", "0 is out of range; use 1 to 65535"),
    ("dicom.max_asociations", 'unknown key; did you mean "max_associations"?'),
    ("dicom.accept_unknown_callers", 'expected true, false or "loopback", found "sometimes"'),
    ("dicom.remote[1].host", "is required"),
    ("storage.durability", '"fast" is not a durability'),
    ("storage.min_free_mb", "-1 is out of range"),
]


def test_check_config_lists_every_problem(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD_CONFIG)
    r = run_outpost("check-config", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    assert lines[0] == f"{len(BAD_CONFIG_PROBLEMS)} problems in the configuration:", out
    problems = lines[1:]
    assert len(problems) == len(BAD_CONFIG_PROBLEMS), out
    for key, message in BAD_CONFIG_PROBLEMS:
        prefix = f"{cfg}: {key}: "
        hits = [p for p in problems if p.startswith(prefix)]
        assert len(hits) == 1, f"no single line for {key}:\n{out}"
        assert message in hits[0], hits[0]


def test_check_config_invalid_toml_and_missing_file(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[dicom\nport = 1\n")
    r = run_outpost("check-config", cfg)
    assert r.returncode == 1
    assert f"{cfg}: not valid TOML" in r.stderr, r.stderr
    r = run_outpost("check-config", tmp_path / "absent.toml")
    assert r.returncode == 1
    assert f"{tmp_path / 'absent.toml'}: cannot read the file" in r.stderr, r.stderr


def test_check_config_dev_toml_is_ok():
    dev = REPO / "configs" / "dev.toml"
    r = run_outpost("check-config", dev)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == (f"{dev}: ok (AE OUTPOST on 127.0.0.1:11112, 2 remote(s), "
                                "0 forwarding destination(s), data in ./outpost-data)")


def test_check_config_example_toml_is_ok():
    r = run_outpost("check-config", REPO / "configs" / "example.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": ok (AE OUTPOST on 0.0.0.0:11112, 1 remote(s)" in r.stdout


# Issue 9, item 21: a UPS that raises its own low-battery warning 240 s before it is empty and a
# threshold of 300 s leave the appliance's stop (20 s grace, 10 s forwarding, 5 s monitors, 30 s
# flush) inside that window; check-config said a bare "ok". It still says ok (exit 0), and warns.
WARN_CONFIG = """\
[ups]
address = "10.0.0.5:502"
profile = "apc-smt"
shutdown_when_runtime_below_s = 300
low_battery_warning_s = 240
"""


def test_check_config_warns_but_accepts(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text(WARN_CONFIG)
    r = run_outpost("check-config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{cfg}: ok (" in r.stdout, r.stdout
    lines = [l.strip() for l in r.stderr.splitlines() if l.strip()]
    assert lines[0] == "1 warning in the configuration:", r.stderr
    assert len(lines) == 2, r.stderr
    assert lines[1].startswith(f"{cfg}: ups.shutdown_when_runtime_below_s: "), r.stderr
    assert "305 s" in lines[1], r.stderr
    # A configuration without anything to warn about prints no warning block.
    cfg.write_text(WARN_CONFIG.replace("= 300", "= 305"))
    r = run_outpost("check-config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr, r.stderr


@pytest.fixture
def imported(tmp_path, small_corpus):
    """An archive filled by `outpost import` from a copy of the small corpus."""
    src = tmp_path / "import"
    shutil.copytree(small_corpus.root, src)
    o = Outpost(tmp_path / "archive")
    r = o.cli("import", src)
    return o, src, r


def test_import_then_duplicates_then_rejects(imported, small_corpus):
    outpost, src, first = imported
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip() == "38 stored, 0 duplicate, 0 rejected"
    assert len(outpost.object_files()) == 38

    second = outpost.cli("import", src)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip() == "0 stored, 38 duplicate, 0 rejected"

    (src / "notes.txt").write_text("not DICOM at all\n" * 20)
    any_file = small_corpus.path(small_corpus.files[0])
    (src / "truncated.dcm").write_bytes(any_file.read_bytes()[:100])
    third = outpost.cli("import", src)
    assert third.returncode == 1, third.stdout + third.stderr
    lines = third.stdout.splitlines()
    assert lines[0] == "0 stored, 38 duplicate, 2 rejected"
    text = third.stdout
    assert re.search(r"^rejected \(1\): not a DICOM Part 10 file: no DICM marker after the "
                     r"128-byte preamble\n  .*notes\.txt$", text, re.M), text
    assert re.search(r"^rejected \(1\): file meta information is truncated or unreadable"
                     r".*\n  .*truncated\.dcm$", text, re.M), text
    assert len(outpost.object_files()) == 38

    # What import stored is what the network serves.
    outpost.start()
    assert net.count_images(outpost.port, small_corpus.studies()) == 38
    assert outpost.terminate() == 0


def test_verify_good_then_damaged_then_orphan(imported, small_corpus):
    outpost, _, first = imported
    assert first.returncode == 0
    r = outpost.cli("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.fullmatch(r"verified 38 instances \(0\.\d MB\): 0 problem\(s\)\n", r.stdout), r.stdout

    # One byte of one stored file flipped, in its pixel data at the end.
    victim = outpost.object_files()[7]
    sop = pydicom.dcmread(victim, stop_before_pixels=True).SOPInstanceUID
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x01
    victim.write_bytes(bytes(data))
    rel = victim.relative_to(outpost.data_dir)
    r = outpost.cli("verify")
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith(f"damaged: instance {sop} at {rel}: CRC-32C is "), lines[0]
    assert re.fullmatch(r"verified 38 instances \(0\.\d MB\): 1 problem\(s\)", lines[1])

    # A second one cut short, and a file nobody indexed.
    short = outpost.object_files()[3]
    short_sop = pydicom.dcmread(short, stop_before_pixels=True).SOPInstanceUID
    size = short.stat().st_size
    short.write_bytes(short.read_bytes()[:-100])
    orphan = short.parent / "stray.dcm"
    shutil.copy(small_corpus.path(small_corpus.files[0]), orphan)
    r = outpost.cli("verify")
    assert r.returncode == 1
    assert f"damaged: instance {sop} " in r.stdout
    assert (f"damaged: instance {short_sop} at {short.relative_to(outpost.data_dir)}: "
            f"size is {size - 100} bytes, {size} were stored") in r.stdout, r.stdout
    assert re.search(rf"^orphan: .*{re.escape(orphan.name)} is not in the index", r.stdout,
                     re.M), r.stdout
    assert r.stdout.splitlines()[-1].endswith("3 problem(s)"), r.stdout


def test_root_may_not_write_into_the_services_archive(imported):
    """Run as root on an archive the service's user owns, `import`, `verify` and `serve`
    refuse and say how to run them: directories root created there would be root's, and
    the service could no longer store beside them."""
    from harness import unit_user
    outpost, src, first = imported
    if unit_user() is None:
        pytest.skip("needs root, and the service running as its unit's user")
    assert first.returncode == 0
    for args in (["import", src], ["verify"], ["serve"]):
        r = run_outpost(*args, "--config", outpost.config_path)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "belongs to outpost" in r.stderr and "sudo -u outpost outpost" in r.stderr, r.stderr
    # Nothing of root's was left in it.
    assert not [p for p in outpost.data_dir.rglob("*") if p.stat().st_uid == 0]
