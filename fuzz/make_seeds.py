#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs: well-formed P-DATA streams carrying C-STORE requests
of small data sets in each transfer syntax, and the command sets alone; C-FIND identifiers;
stored Part 10 files for the transcode target. Random bytes almost never form a PDU or a data
set, so without seeds the targets would not get past the parsers. The hostile shapes the
review found are seeds too, kept under 1 MiB each (the fuzz runs' -max_len): a data set of
UIDs followed by tens of thousands of repeated empty PatientName elements (plain and
deflated), an identifier of 120,000 empty keys, and deflate bombs. Run from anywhere; needs
pydicom."""
import pathlib
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

HERE = pathlib.Path(__file__).resolve().parent
CT = "1.2.840.10008.5.1.4.1.1.2"


def element(group, elem, value):
    """An implicit VR little endian command element."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value)) + value


def command(sop_instance):
    body = element(0, 0x0002, CT.encode())
    body += element(0, 0x0100, struct.pack("<H", 0x0001))
    body += element(0, 0x0110, struct.pack("<H", 7))
    body += element(0, 0x0700, struct.pack("<H", 0))
    body += element(0, 0x0800, struct.pack("<H", 0))
    body += element(0, 0x1000, sop_instance.encode())
    return element(0, 0x0000, struct.pack("<I", len(body))) + body


def pdata(pc_id, is_command, last, data):
    header = (1 if is_command else 0) | (2 if last else 0)
    pdv = struct.pack(">IBB", len(data) + 2, pc_id, header) + data
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def dataset(uid, little, implicit):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid
    ds.StudyDate = "20260101"
    ds.PatientName = "MÜLLER^HANS"
    ds.PatientID = "PID1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.Modality = "CT"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(32))
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian = little
    out.is_implicit_VR = implicit
    pydicom.filewriter.write_dataset(out, ds)
    return out.getvalue()


seeds = {
    0: ("implicit", dataset("1.2.3.4.1.1", True, True)),
    1: ("explicit", dataset("1.2.3.4.1.2", True, False)),
    2: ("big-endian", dataset("1.2.3.4.1.3", False, False)),
}
deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
raw = dataset("1.2.3.4.1.4", True, False)
seeds[3] = ("deflated", deflater.compress(raw) + deflater.flush())

for ts_index, (name, data) in seeds.items():
    uid = ["1.2.3.4.1.1", "1.2.3.4.1.2", "1.2.3.4.1.3", "1.2.3.4.1.4"][ts_index]
    cmd = command(uid)
    stream = bytes([ts_index]) + pdata(1, True, True, cmd)
    # Two data fragments, so reassembly across PDVs is exercised.
    half = len(data) // 2
    stream += pdata(1, False, False, data[:half]) + pdata(1, False, True, data[half:])
    (HERE / "seeds" / "pdu_to_index" / f"store-{name}").write_bytes(stream)
    (HERE / "seeds" / "command_set" / f"c-store-{name}").write_bytes(cmd)


def element_le(group, elem, vr, value):
    """An explicit VR little endian element."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def deflate(data):
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


# A data set that repeats one tag: its UIDs, then 60,000 empty PatientName elements (the
# review's had 10 million; the shape is what matters, and the file must stay under 1 MiB).
repeated = (element_le(0x0008, 0x0016, b"UI", CT.encode())
            + element_le(0x0008, 0x0018, b"UI", b"1.2.3.4.2.1")
            + element_le(0x0010, 0x0010, b"PN", b"") * 60_000
            + element_le(0x0020, 0x000D, b"UI", b"1.2.3.4")
            + element_le(0x0020, 0x000E, b"UI", b"1.2.3.4.2"))
for ts_index, name, data in [(1, "repeated-patient-name", repeated),
                             (3, "repeated-patient-name-deflated", deflate(repeated * 8))]:
    cmd = command("1.2.3.4.2.1")
    stream = bytes([ts_index]) + pdata(1, True, True, cmd)
    for i in range(0, len(data), 16_000):
        stream += pdata(1, False, i + 16_000 >= len(data), data[i:i + 16_000])
    (HERE / "seeds" / "pdu_to_index" / f"store-{name}").write_bytes(stream)

# C-FIND identifiers; the first byte picks the syntax (0 Explicit VR LE, 1 Deflated, 2
# Implicit VR LE) and, with 0x80 set, the Patient Root model.
find_dir = HERE / "seeds" / "find_identifier"
find_dir.mkdir(parents=True, exist_ok=True)
study = (element_le(0x0008, 0x0052, b"CS", b"STUDY")
         + element_le(0x0010, 0x0010, b"PN", b"SYNTH*")
         + element_le(0x0010, 0x0020, b"LO", b"")
         + element_le(0x0020, 0x000D, b"UI", b"")
         + element_le(0x0020, 0x1208, b"IS", b""))
(find_dir / "study-explicit").write_bytes(b"\x00" + study)
(find_dir / "study-deflated").write_bytes(b"\x01" + deflate(study))
image = (element_le(0x0008, 0x0018, b"UI", b"")
         + element_le(0x0008, 0x0052, b"CS", b"IMAGE")
         + element_le(0x0020, 0x000D, b"UI", b"1.2.3")
         + element_le(0x0020, 0x000E, b"UI", b"1.2.3.4"))
(find_dir / "image-explicit").write_bytes(b"\x00" + image)
patient = element_le(0x0008, 0x0052, b"CS", b"PATIENT") + element_le(0x0010, 0x0020, b"LO", b"*")
(find_dir / "patient-root").write_bytes(b"\x80" + patient)
# 120,000 empty keys in ascending private tags: the review's 2.8 GB identifier.
many = element_le(0x0008, 0x0052, b"CS", b"STUDY") + b"".join(
    element_le(0x0009 + 2 * (n // 0xFF00), 0x0100 + n % 0xFF00, b"LO", b"")
    for n in range(120_000))
(find_dir / "120000-empty-keys").write_bytes(b"\x00" + many)
(find_dir / "120000-empty-keys-deflated").write_bytes(b"\x01" + deflate(many))

# Stored Part 10 files; the first byte picks the target syntax (0 Explicit VR LE, 1 Implicit
# VR LE, 2 Explicit VR BE).
transcode_dir = HERE / "seeds" / "transcode"
transcode_dir.mkdir(parents=True, exist_ok=True)


def part10(ts, data):
    meta_body = (element_le(0x0002, 0x0001, b"OB", b"\0\1")
                 + element_le(0x0002, 0x0002, b"UI", CT.encode())
                 + element_le(0x0002, 0x0003, b"UI", b"1.2.3.4.3.1")
                 + element_le(0x0002, 0x0010, b"UI", ts.encode()))
    meta = element_le(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    return b"\0" * 128 + b"DICM" + meta + data


explicit = dataset("1.2.3.4.3.1", True, False)
(transcode_dir / "explicit-to-implicit").write_bytes(b"\x01" + part10("1.2.840.10008.1.2.1", explicit))
(transcode_dir / "deflated-to-explicit").write_bytes(
    b"\x00" + part10("1.2.840.10008.1.2.1.99", deflate(explicit)))
(transcode_dir / "implicit-to-big-endian").write_bytes(
    b"\x02" + part10("1.2.840.10008.1.2", dataset("1.2.3.4.3.1", True, True)))
# A deflate bomb: its data set's private OB of 200 MiB of zeros deflates to about 200 kB, and
# inflates past the 64 MiB transcode limit the target runs with.
bomb = (explicit[:0] + element_le(0x0008, 0x0016, b"UI", CT.encode())
        + element_le(0x0008, 0x0018, b"UI", b"1.2.3.4.3.2")
        + struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 6) + b"OUTPST"
        + struct.pack("<HH", 0x0009, 0x1000) + b"OB\0\0" + struct.pack("<I", 200 << 20))
z = zlib.compressobj(9, zlib.DEFLATED, -15)
bomb_stream = z.compress(bomb)
chunk = b"\0" * (1 << 20)
for _ in range(200):
    bomb_stream += z.compress(chunk)
bomb_stream += z.flush()
(transcode_dir / "deflate-bomb-to-implicit").write_bytes(
    b"\x01" + part10("1.2.840.10008.1.2.1.99", bomb_stream))
print("seeds written")
