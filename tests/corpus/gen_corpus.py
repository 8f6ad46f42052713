#!/usr/bin/env python3
"""Deterministic generator of a synthetic, realistic DICOM test corpus for Outpost.

Usage
-----
    gen_corpus.py OUT_DIR [--profile NAME] [--seed N] [--patients N] [--manifest]

Writes Part 10 files as OUT_DIR/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<n>.dcm
(n = InstanceNumber) and prints one line: "N files, X MB in OUT_DIR" (MB = 10^6 bytes).
Existing files in OUT_DIR are overwritten, nothing is deleted.

The same profile and seed always give byte-identical files (with the same pydicom and
zlib). The generator needs only pydicom 3.x; pixel data is noise from random.Random,
seeded per frame with the SOP Instance UID, so no numpy is needed.

With --manifest, OUT_DIR/manifest.json is written too:
    {"generator": ..., "profile": ..., "seed": ..., "files": [
        {"path", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
         "SeriesInstanceUID", "PatientID", "IssuerOfPatientID", "PatientName",
         "Modality", "TransferSyntaxUID", "SpecificCharacterSet", "NumberOfFrames",
         "Roles"}, ...]}
"path" is relative to OUT_DIR with "/" separators; "SpecificCharacterSet" is the
DICOM value, several values joined by "\\"; "PatientName" is the decoded name and
"IssuerOfPatientID" is null when absent. "Roles" lists the special things about a
file (empty list for ordinary files), so tests can find them without hard-coding UIDs:
    "implicit-vr", "big-endian", "deflated", "rle", "latin1", "utf8", "iso2022-jp",
    "multiframe", "private-tags", "nested-sequences", "issuer-pair",
    "same-patient-two-studies", "empty-patient-name", "empty-accession".

UIDs
----
All UIDs are built from the root 1.2.826.0.1.3680043.10.543, so corpora of different
profiles and seeds can go into one archive without collisions:
    study           ROOT.<profile>.<seed>.1.<study>
    series          ROOT.<profile>.<seed>.2.<study>.<series>
    SOP instance    ROOT.<profile>.<seed>.3.<study>.<series>.<instance>
    frame of ref.   ROOT.<profile>.<seed>.4.<study>.<series>
    other refs      ROOT.<profile>.<seed>.5.<study>.<n>
profile codes: small=1 ct=2 mixed=3 query=4 scale=5 huge=6; <study> counts from 1
across the profile, <series> is the SeriesNumber, <instance> the InstanceNumber.
The seed must be in 0..4294967295.

Profiles
--------
small (default), about 40 files, well under 1 MB; every name and date is fixed, the
seed changes only UIDs and pixels:
    patient "OUTPOST-0001", issuer "HOSP_A", "MÜLLER^JÜRGEN", ISO_IR 100
        study 1, CT chest: series 1 CT 12 slices 64x64x16, series 2 CT 12 slices
        study 2, MR head: series 1 T1 6 slices 64x64, series 2 T2 6 slices
    patient "OUTPOST-0001", issuer "HOSP_B" (another person, same PatientID),
        "ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ", ISO_IR 192 (UTF-8)
        study 3, chest X-ray: series 1 CR 1 image 128x128x16 (MONOCHROME1)
    patient "OUTPOST-0003", no issuer, "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "\\ISO 2022 IR 87" (the study description is in kanji too)
        study 4, abdominal ultrasound: series 1 US multiframe, 3 frames 32x48 RGB
    All files are Explicit VR Little Endian except, in study 1:
        series 1 instance 7   Implicit VR Little Endian   1.2.840.10008.1.2
        series 1 instance 12  RLE Lossless                1.2.840.10008.1.2.5
        series 2 instance 4   Deflated Explicit VR LE     1.2.840.10008.1.2.1.99
    and in study 2:
        series 1 instance 3   Explicit VR Big Endian      1.2.840.10008.1.2.2
    Every CT instance (in every profile) has nested sequences (ProcedureCodeSequence,
    ReferencedStudySequence, RequestAttributesSequence > ScheduledProtocolCodeSequence,
    an empty ReferencedPatientSequence), some with explicit and some with undefined
    lengths, and a private block in group 0009 with the creator "OUTPOST CORPUS":
    (0009,1001) LO, (0009,1002) DS, (0009,1003) UL, (0009,1004) OB and (0009,1005), a
    private SQ of undefined length whose item holds its own private block.
ct      1 patient, 1 CT series of 300 slices 512x512x16 (about 157 MB), ingest benchmarks.
mixed   4 patients: CT 150 slices 512x512, MR 100 slices 256x256, CR 2 images
        2048x2500 (columns x rows), US multiframe 30 frames 480x640 RGB (about 140 MB).
query   --patients (default 60) patients, about twice as many studies (1 to 3 each), tiny
        8x8 images in 1-2 series of 1-3 instances; names, dates, times, modalities
        (CT MR CR DX MG US OT, some studies with two modalities) and accession numbers
        vary for C-FIND tests. Includes: names sharing prefixes (SMITH, SMITHSON,
        SMYTHE), a five-component name, an apostrophe, a space, a family-name-only
        name, an empty name, mixed case, Latin-1, Greek and Cyrillic (UTF-8) and
        Japanese (ISO 2022) names, empty birth date, sex and accession numbers,
        studies at 000000 and 235959, ten studies on 20240115, and one PatientID
        under two issuers.
scale   --patients (default 20) patients x 5 studies x 2 series x 5 images of 8x8,
        for index scale (--patients 2000 gives 100 000 files).
huge    1 US multiframe, 480 rows x 640 columns RGB x 700 frames (about 645 MB).
        The pixel data is streamed to disk, frame by frame, so memory stays small.

Every instance carries the patient, study, series, equipment and image pixel
attributes; CT and MR also carry the plane geometry and a FrameOfReferenceUID, CT the
rescale and window attributes. 16-bit images have BitsStored 12 (values 0..4095).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import sys
from dataclasses import dataclass, field

try:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
    )
except ImportError:  # pragma: no cover
    sys.exit("gen_corpus.py needs pydicom 3.x (pip install 'pydicom>=3,<4')")

ROOT = "1.2.826.0.1.3680043.10.543"
IMPLEMENTATION_CLASS_UID = ROOT + ".0.1"
IMPLEMENTATION_VERSION = "OUTPOST_CORPUS1"
PROFILE_CODES = {"small": 1, "ct": 2, "mixed": 3, "query": 4, "scale": 5, "huge": 6}
MAX_SEED = 2**32 - 1

# SOP classes.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MG_IMAGE = "1.2.840.10008.5.1.4.1.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"

PRIVATE_CREATOR = "OUTPOST CORPUS"
STREAM_THRESHOLD = 64 * 1024 * 1024  # pixel data larger than this is streamed

# Clears the top nibble of a byte: applied to the high byte of 16-bit samples so that
# values fit BitsStored 12.
MASK_12BIT = bytes(b & 0x0F for b in range(256))


# ---------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Image:
    rows: int
    cols: int
    bits: int = 16  # BitsAllocated, 8 or 16
    samples: int = 1
    frames: int = 1
    photometric: str = "MONOCHROME2"

    @property
    def frame_len(self) -> int:
        return self.rows * self.cols * self.samples * (self.bits // 8)


@dataclass
class Patient:
    pid: str
    name: str
    birth: str  # DA or ""
    sex: str  # M, F, O or ""
    charset: str | list[str]
    issuer: str | None = None
    roles: tuple[str, ...] = ()


@dataclass
class Series:
    number: int
    modality: str
    description: str
    image: Image
    count: int
    body_part: str = ""
    station: str = "OUTPOST-MOD1"
    manufacturer: str = "OUTPOST SYNTHETIC"
    model: str = "CORPUS"
    minutes: int = 2  # series start, minutes after the study start
    # instance number -> (transfer syntax, role)
    special: dict[int, tuple[str, str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # modality specific knobs


@dataclass
class Study:
    index: int
    patient: Patient
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str
    institution: str
    procedure: tuple[str, str]  # (code value, meaning)
    series: list[Series] = field(default_factory=list)
    roles: tuple[str, ...] = ()


class Uids:
    """Structured, deterministic UIDs; see the module docstring."""

    def __init__(self, profile: str, seed: int):
        self.prefix = f"{ROOT}.{PROFILE_CODES[profile]}.{seed}"

    def _uid(self, *parts: int) -> str:
        uid = ".".join([self.prefix, *(str(p) for p in parts)])
        assert len(uid) <= 64, uid
        return uid

    def study(self, s: int) -> str:
        return self._uid(1, s)

    def series(self, s: int, n: int) -> str:
        return self._uid(2, s, n)

    def instance(self, s: int, n: int, i: int) -> str:
        return self._uid(3, s, n, i)

    def frame_of_reference(self, s: int, n: int) -> str:
        return self._uid(4, s, n)

    def other(self, s: int, k: int) -> str:
        return self._uid(5, s, k)


# ---------------------------------------------------------------------------------
# Pixel data


def noise_frame(key: str, index: int, image: Image, big_endian: bool) -> bytes:
    """One frame of deterministic noise; 16-bit samples are limited to 12 bits."""
    data = random.Random(f"{key}#{index}").randbytes(image.frame_len)
    if image.bits != 16:
        return data
    buf = bytearray(data)
    if big_endian:
        buf[0::2] = buf[0::2].translate(MASK_12BIT)
    else:
        buf[1::2] = buf[1::2].translate(MASK_12BIT)
    return bytes(buf)


class NoiseStream(io.BufferedIOBase):
    """Pixel data made frame by frame as pydicom reads it, for very large objects."""

    def __init__(self, key: str, image: Image, big_endian: bool = False):
        super().__init__()
        self._key, self._image, self._be = key, image, big_endian
        self._len = image.frame_len * image.frames
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._len}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _frame(self, index: int) -> bytes:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, noise_frame(self._key, index, self._image, self._be))
        return self._cached[1]

    def read(self, size: int | None = -1) -> bytes:
        end = self._len if size is None or size < 0 else min(self._len, self._pos + size)
        out = []
        flen = self._image.frame_len
        while self._pos < end:
            index, start = divmod(self._pos, flen)
            chunk = self._frame(index)[start : start + (end - self._pos)]
            out.append(chunk)
            self._pos += len(chunk)
        return b"".join(out)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def pixel_payload(key: str, image: Image, big_endian: bool):
    total = image.frame_len * image.frames
    if total > STREAM_THRESHOLD:
        return NoiseStream(key, image, big_endian)
    return b"".join(noise_frame(key, f, image, big_endian) for f in range(image.frames))


# ---------------------------------------------------------------------------------
# Formatting helpers


def ds_str(value: float) -> str:
    """A DS value: at most 16 characters, no exponent for our ranges."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def add_time(date: str, time: str, seconds: float) -> tuple[str, str]:
    """(DA, TM) of date/time plus seconds; TM keeps a fraction when there is one."""
    start = dt.datetime.strptime(date + time[:6], "%Y%m%d%H%M%S")
    moment = start + dt.timedelta(seconds=seconds)
    tm = moment.strftime("%H%M%S")
    if moment.microsecond:
        tm += f".{moment.microsecond:06d}"
    return moment.strftime("%Y%m%d"), tm


def age(birth: str, on: str) -> str:
    if not birth:
        return ""
    b = dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
    d = dt.date(int(on[:4]), int(on[4:6]), int(on[6:]))
    years = d.year - b.year - ((d.month, d.day) < (b.month, b.day))
    if years >= 2:
        return f"{min(years, 999):03d}Y"
    return f"{max((d - b).days // 30, 0):03d}M"


def charset_text(charset: str | list[str]) -> str:
    return "\\".join(charset) if isinstance(charset, list) else charset


def code_item(value: str, meaning: str, scheme: str = "99OUTPOST") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


# ---------------------------------------------------------------------------------
# Building one instance


def build_instance(uids: Uids, study: Study, series: Series, number: int) -> tuple[Dataset, str, list[str]]:
    """Returns the dataset, its transfer syntax and its manifest roles."""
    patient = study.patient
    image = series.image
    s, n = study.index, series.number
    sop_class = modality_sop_class(series)
    sop_uid = uids.instance(s, n, number)
    ts, role = series.special.get(number, (ExplicitVRLittleEndian, ""))
    roles = [r for r in (*patient.roles, *study.roles, role) if r]

    ds = Dataset()
    # The charset must be set first so pydicom encodes the text that follows with it.
    ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid

    series_date, series_time = add_time(study.date, study.time, series.minutes * 60)
    content_date, content_time = add_time(
        study.date, study.time, series.minutes * 60 + 30 + number * 0.25
    )
    ds.StudyDate, ds.StudyTime = study.date, study.time
    ds.SeriesDate, ds.SeriesTime = series_date, series_time
    ds.AcquisitionDate, ds.AcquisitionTime = content_date, content_time
    ds.ContentDate, ds.ContentTime = content_date, content_time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = series.manufacturer
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = study.referring
    ds.StationName = series.station
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = series.model
    ds.DeviceSerialNumber = f"SN-{series.modality}-{n:02d}"
    ds.SoftwareVersions = "gen_corpus 1"

    ds.PatientName = patient.name
    ds.PatientID = patient.pid
    if patient.issuer is not None:
        ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth
    ds.PatientSex = patient.sex
    ds.PatientAge = age(patient.birth, study.date)

    ds.BodyPartExamined = series.body_part
    ds.StudyInstanceUID = uids.study(s)
    ds.SeriesInstanceUID = uids.series(s, n)
    ds.StudyID = study.study_id
    ds.SeriesNumber = n
    ds.InstanceNumber = number

    # Image pixel module.
    ds.SamplesPerPixel = image.samples
    ds.PhotometricInterpretation = image.photometric
    if image.samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows = image.rows
    ds.Columns = image.cols
    ds.BitsAllocated = image.bits
    ds.BitsStored = 12 if image.bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if image.frames > 1 or sop_class == US_MULTIFRAME:
        ds.NumberOfFrames = image.frames

    MODALITY_MODULES[series.modality](ds, uids, study, series, number)
    if series.modality == "CT":
        add_ct_extras(ds, uids, study)
        roles += ["private-tags", "nested-sequences"]
    if image.frames > 1:
        roles.append("multiframe")

    big_endian = ts == ExplicitVRBigEndian
    ds.add_new(
        0x7FE00010,
        "OW" if image.bits == 16 else "OB",
        pixel_payload(sop_uid, image, big_endian),
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts == RLELossless else ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    if ts == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    return ds, ts, sorted(set(roles), key=roles.index)


def modality_sop_class(series: Series) -> str:
    if series.modality == "US":
        return US_MULTIFRAME if series.extra.get("multiframe") else US_IMAGE
    return {
        "CT": CT_IMAGE,
        "MR": MR_IMAGE,
        "CR": CR_IMAGE,
        "DX": DX_IMAGE,
        "MG": MG_IMAGE,
        "OT": SC_IMAGE,
    }[series.modality]


def add_plane(ds: Dataset, uids: Uids, study: Study, series: Series, number: int, fov: float) -> None:
    spacing = fov / series.image.cols
    thickness = series.extra.get("thickness", 5.0)
    z = series.extra.get("z0", 0.0) - (number - 1) * thickness
    ds.FrameOfReferenceUID = uids.frame_of_reference(study.index, series.number)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [ds_str(-fov / 2), ds_str(-fov / 2), ds_str(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [ds_str(spacing), ds_str(spacing)]
    ds.SliceThickness = ds_str(thickness)
    ds.SliceLocation = ds_str(z)
    ds.PatientPosition = "HFS"


def module_ct(ds: Dataset, uids: Uids, study: Study, series: Series, number: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    add_plane(ds, uids, study, series, number, fov=350.0)
    ds.KVP = "120"
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    ds.ConvolutionKernel = series.extra.get("kernel", "STANDARD")
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = series.extra.get("window", ("40", "400"))[0]
    ds.WindowWidth = series.extra.get("window", ("40", "400"))[1]
    ds.WindowCenterWidthExplanation = "SYNTHETIC"


def module_mr(ds: Dataset, uids: Uids, study: Study, series: Series, number: int) -> None:
    t2 = series.extra.get("weighting") == "T2"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    add_plane(ds, uids, study, series, number, fov=240.0)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK" if t2 else "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "4000" if t2 else "500"
    ds.EchoTime = "90" if t2 else "12"
    ds.EchoTrainLength = 16 if t2 else 1
    ds.MagneticFieldStrength = "1.5"
    ds.ImagingFrequency = "63.8766"
    ds.ImagedNucleus = "1H"
    ds.SpacingBetweenSlices = ds_str(series.extra.get("thickness", 5.0))
    ds.AcquisitionNumber = 1


def module_projection(ds: Dataset, uids: Uids, study: Study, series: Series, number: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    views = series.extra.get("views", ["PA"])
    view = views[(number - 1) % len(views)]
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["P", "F"]
    pitch = ds_str(series.extra.get("pitch", 0.15))
    ds.ImagerPixelSpacing = [pitch, pitch]
    ds.KVP = "110" if series.modality != "MG" else "28"
    ds.ExposureInuAs = 2500
    if series.modality in ("DX", "MG"):
        ds.PresentationIntentType = "FOR PRESENTATION"
    if series.modality == "MG":
        ds.ImageLaterality = "L" if number % 2 else "R"
        ds.ViewPosition = "CC" if number <= 2 else "MLO"
    if series.image.bits == 16:
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"


def module_us(ds: Dataset, uids: Uids, study: Study, series: Series, number: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.PatientOrientation = ""
    if ds.SOPClassUID == US_MULTIFRAME:
        ds.FrameTime = "33.333"
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.CineRate = 30
        ds.RecommendedDisplayFrameRate = 30
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = series.image.cols - 1
    region.RegionLocationMaxY1 = series.image.rows - 1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.03
    region.PhysicalDeltaY = 0.03
    ds.SequenceOfUltrasoundRegions = Sequence([region])


def module_sc(ds: Dataset, uids: Uids, study: Study, series: Series, number: int) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""


MODALITY_MODULES = {
    "CT": module_ct,
    "MR": module_mr,
    "CR": module_projection,
    "DX": module_projection,
    "MG": module_projection,
    "US": module_us,
    "OT": module_sc,
}


def add_ct_extras(ds: Dataset, uids: Uids, study: Study) -> None:
    """Nested sequences and a private block, so parsers meet both."""
    code, meaning = study.procedure
    ds.ProcedureCodeSequence = Sequence([code_item(code, meaning)])
    ref = Dataset()
    ref.ReferencedSOPClassUID = DETACHED_STUDY
    ref.ReferencedSOPInstanceUID = uids.other(study.index, 1)
    ds.ReferencedStudySequence = Sequence([ref])
    ds.ReferencedPatientSequence = Sequence([])  # present but empty
    request = Dataset()
    request.RequestedProcedureID = f"RP{study.index}"
    request.ScheduledProcedureStepID = f"SPS{study.index}"
    request.ScheduledProcedureStepDescription = meaning
    request.ScheduledProtocolCodeSequence = Sequence([code_item(code + "-P", meaning + " protocol")])
    ds.RequestAttributesSequence = Sequence([request])

    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "synthetic corpus")
    block.add_new(0x02, "DS", "1.5")
    block.add_new(0x03, "UL", study.index)
    block.add_new(0x04, "OB", bytes(range(1, 17)))
    inner = Dataset()
    inner_block = inner.private_block(0x0009, PRIVATE_CREATOR, create=True)
    inner_block.add_new(0x01, "LO", "nested private item")
    inner.CodeValue = "X1"
    block.add_new(0x05, "SQ", Sequence([inner]))

    # Both length encodings: these are written with undefined lengths (delimited), the
    # other sequences and items with explicit lengths. The private SQ is delimited so
    # that Implicit VR readers can recognise it as a sequence.
    for elem in (ds["ProcedureCodeSequence"], ds["ReferencedPatientSequence"],
                 request["ScheduledProtocolCodeSequence"], block[0x05]):
        elem.is_undefined_length = True
        for item in elem.value:
            item.is_undefined_length_sequence_item = True


# ---------------------------------------------------------------------------------
# Profiles


def profile_small(seed: int, patients: int | None) -> list[Study]:
    mueller = Patient(
        "OUTPOST-0001", "MÜLLER^JÜRGEN", "19580412", "M", "ISO_IR 100", "HOSP_A",
        roles=("latin1", "issuer-pair", "same-patient-two-studies"),
    )
    greek = Patient(
        "OUTPOST-0001", "ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ", "19810930", "F", "ISO_IR 192", "HOSP_B",
        roles=("utf8", "issuer-pair"),
    )
    yamada = Patient(
        "OUTPOST-0003", "Yamada^Tarou=山田^太郎=やまだ^たろう", "19700101", "M",
        ["", "ISO 2022 IR 87"], None, roles=("iso2022-jp",),
    )
    tiny16 = Image(64, 64)
    ct_study = Study(
        1, mueller, "20230314", "091200", "ACC-2023-0001", "1", "Thorax nativ",
        "WEBER^ANNA^^DR", "Klinikum Süd", ("CTTHX", "CT Thorax ohne KM"),
        series=[
            Series(1, "CT", "Thorax 5mm Weichteil", tiny16, 12, "CHEST", "CT-SÜD-1",
                   special={7: (ImplicitVRLittleEndian, "implicit-vr"), 12: (RLELossless, "rle")},
                   extra={"z0": -50.0}),
            Series(2, "CT", "Thorax 5mm Lunge", tiny16, 12, "CHEST", "CT-SÜD-1", minutes=3,
                   special={4: (DeflatedExplicitVRLittleEndian, "deflated")},
                   extra={"z0": -50.0, "kernel": "LUNG", "window": ("-600", "1500")}),
        ],
    )
    mr_study = Study(
        2, mueller, "20240122", "143000", "ACC-2024-0002", "2", "MRT Schädel",
        "WEBER^ANNA^^DR", "Klinikum Süd", ("MRHEAD", "MRT Schädel nativ"),
        series=[
            Series(1, "MR", "t1_se_tra", tiny16, 6, "HEAD", "MR-SÜD-1",
                   special={3: (ExplicitVRBigEndian, "big-endian")},
                   extra={"z0": 60.0, "weighting": "T1"}),
            Series(2, "MR", "t2_tse_tra", tiny16, 6, "HEAD", "MR-SÜD-1", minutes=8,
                   extra={"z0": 60.0, "weighting": "T2"}),
        ],
    )
    cr_study = Study(
        3, greek, "20240305", "080512", "HB-77001", "77001", "Ακτινογραφία θώρακος",
        "ΓΕΩΡΓΙΟΥ^ΝΙΚΟΣ", "Γενικό Νοσοκομείο", ("XRCHEST", "Chest X-ray PA"),
        series=[Series(1, "CR", "Θώραξ PA", Image(128, 128, photometric="MONOCHROME1"), 1,
                       "CHEST", "CR-ROOM2", extra={"pitch": 0.2})],
    )
    us_study = Study(
        4, yamada, "20240611", "101500", "JP-0042", "42", "腹部超音波",
        "SATO^HANAKO", "Tokyo General", ("USABD", "US abdomen"),
        series=[Series(1, "US", "Abdomen cine", Image(32, 48, bits=8, samples=3, frames=3,
                                                       photometric="RGB"),
                       1, "ABDOMEN", "US-1", extra={"multiframe": True})],
    )
    return [ct_study, mr_study, cr_study, us_study]


def profile_ct(seed: int, patients: int | None) -> list[Study]:
    patient = Patient("BENCH-CT-0001", "BENCHMARK^CT", "19650203", "F", "ISO_IR 100", "BENCH")
    return [Study(
        1, patient, "20240410", "120000", "BENCH-CT-1", "1", "CT CHEST ABDOMEN PELVIS",
        "REFERRER^BENCH", "Outpost Benchmark Hospital", ("CTCAP", "CT chest abdomen pelvis"),
        series=[Series(1, "CT", "Body 1.0 mm", Image(512, 512), 300, "CHEST", "CT-BENCH",
                       extra={"thickness": 1.0, "z0": 0.0})],
    )]


def profile_mixed(seed: int, patients: int | None) -> list[Study]:
    ct_pat = Patient("MIX-0001", "HARTMANN^PETRA", "19600517", "F", "ISO_IR 100", "MIX")
    mr_pat = Patient("MIX-0002", "DUBOIS^ÉTIENNE", "19750822", "M", "ISO_IR 100", "MIX")
    cr_pat = Patient("MIX-0003", "KOWALSKI^JAN", "19881111", "M", "ISO_IR 100", "MIX")
    us_pat = Patient("MIX-0004", "LINDQVIST^SÖREN", "19920301", "M", "ISO_IR 100", "MIX")
    inst = "Outpost Mixed Clinic"
    return [
        Study(1, ct_pat, "20240102", "081500", "MIX-A1", "1", "CT ABDOMEN W CONTRAST",
              "NAGY^ZOLTAN", inst, ("CTABD", "CT abdomen with contrast"),
              series=[Series(1, "CT", "Abdomen 2 mm", Image(512, 512), 150, "ABDOMEN",
                             "CT-MIX", extra={"thickness": 2.0, "z0": 0.0})]),
        Study(2, mr_pat, "20240103", "090000", "MIX-A2", "2", "MR BRAIN",
              "NAGY^ZOLTAN", inst, ("MRBRAIN", "MR brain"),
              series=[Series(1, "MR", "t1_tra 1.5 mm", Image(256, 256), 100, "HEAD",
                             "MR-MIX", extra={"thickness": 1.5, "z0": 80.0})]),
        Study(3, cr_pat, "20240104", "101010", "MIX-A3", "3", "CHEST 2 VIEWS",
              "NAGY^ZOLTAN", inst, ("XRCHEST2", "Chest two views"),
              series=[Series(1, "CR", "Chest PA/LAT", Image(2500, 2048, photometric="MONOCHROME1"),
                             2, "CHEST", "CR-MIX", extra={"views": ["PA", "LL"], "pitch": 0.175})]),
        Study(4, us_pat, "20240105", "113000", "MIX-A4", "4", "US ABDOMEN",
              "NAGY^ZOLTAN", inst, ("USABD", "US abdomen"),
              series=[Series(1, "US", "Liver cine", Image(480, 640, bits=8, samples=3, frames=30,
                                                          photometric="RGB"),
                             1, "ABDOMEN", "US-MIX", extra={"multiframe": True})]),
    ]


def profile_huge(seed: int, patients: int | None) -> list[Study]:
    patient = Patient("HUGE-0001", "BIGCINE^ULTRA", "19790909", "O", "ISO_IR 100", "BENCH")
    image = Image(480, 640, bits=8, samples=3, frames=700, photometric="RGB")
    return [Study(
        1, patient, "20240701", "150000", "HUGE-1", "1", "ECHO LONG CINE",
        "REFERRER^BENCH", "Outpost Benchmark Hospital", ("USECHO", "Echocardiography"),
        series=[Series(1, "US", "Cine 700 frames", image, 1, "HEART", "US-BENCH",
                       extra={"multiframe": True})],
    )]


FAMILY = [
    "ANDERSSON", "BAKER", "CHEN", "DIALLO", "EKSTROM", "FERREIRA", "GARCIA", "HOFFMANN",
    "IVANOVA", "JENSEN", "KIM", "LAURENT", "MORALES", "NGUYEN", "OKONKWO", "PATEL",
    "QUINTERO", "ROSSI", "SATO", "TAYLOR", "UDDIN", "VARGA", "WILLIAMS", "XU", "YILMAZ",
    "ZIMMERMANN", "BROWN", "BROWNING", "JOHNSON", "JOHNSTON",
]
GIVEN = [
    "ADA", "BEN", "CLARA", "DAVID", "ELIF", "FELIX", "GRACE", "HENRIK", "INES", "JONAS",
    "KAMALA", "LUCA", "MAYA", "NOAH", "OLIVIA", "PAUL", "ROSA", "SAMIR", "TARA", "VIKTOR",
]
REFERRERS = ["HOUSE^GREGORY^^DR", "GREY^MEREDITH^^DR", "KILDARE^JAMES", "QUINN^MICHAELA^^DR", ""]
INSTITUTIONS = ["Outpost General", "Northside Clinic", "St. Elsewhere", "Harbor Imaging Center"]
QUERY_STUDY_KINDS = [
    # modality, weight, descriptions, body part, extra series modality
    ("CT", 5, ["CT CHEST W/O CONTRAST", "CT HEAD", "CT ABDOMEN PELVIS W CONTRAST"], "CHEST", "OT"),
    ("MR", 4, ["MR BRAIN", "MR KNEE LEFT", "MR LUMBAR SPINE"], "HEAD", None),
    ("CR", 3, ["CHEST 2 VIEWS", "HAND LEFT", "PELVIS AP"], "CHEST", None),
    ("DX", 2, ["CHEST PA", "FOOT RIGHT"], "CHEST", None),
    ("MG", 2, ["SCREENING MAMMOGRAPHY BILATERAL"], "BREAST", None),
    ("US", 3, ["US ABDOMEN", "US THYROID", "US OBSTETRIC"], "ABDOMEN", None),
    ("OT", 1, ["OUTSIDE IMAGES"], "", None),
]


def tiny_image(modality: str) -> Image:
    if modality in ("US", "OT"):
        return Image(8, 8, bits=8)
    return Image(8, 8)


def profile_query(seed: int, patients: int | None) -> list[Study]:
    rng = random.Random(f"query/{seed}")
    count = patients if patients is not None else 60
    if count < 20:
        raise SystemExit("the query profile needs --patients >= 20")
    ascii_cs = "ISO_IR 100"
    special = [
        ("SMITH^JOHN", ascii_cs, ()),
        ("SMITH^JANE", ascii_cs, ()),
        ("SMITHSON^PETER", ascii_cs, ()),
        ("SMYTHE^ALICE", ascii_cs, ()),
        ("DOE^JOHN^QUINCY^DR^JR", ascii_cs, ()),
        ("O'BRIEN^SIOBHAN", ascii_cs, ()),
        ("VAN DER BERG^PIETER", ascii_cs, ()),
        ("MADONNA", ascii_cs, ()),
        ("", ascii_cs, ("empty-patient-name",)),
        ("McAllister^Fiona", ascii_cs, ()),
        ("MÜLLER^ANNA", ascii_cs, ("latin1",)),
        ("ΔΗΜΗΤΡΙΟΥ^ΜΑΡΙΑ", "ISO_IR 192", ("utf8",)),
        ("ИВАНОВ^ИВАН", "ISO_IR 192", ("utf8",)),
        ("Suzuki^Hanako=鈴木^花子=すずき^はなこ", ["", "ISO 2022 IR 87"], ("iso2022-jp",)),
        ("JONES^MARY", ascii_cs, ("issuer-pair",)),
        ("JONES^MARGARET", ascii_cs, ("issuer-pair",)),
    ]
    people: list[Patient] = []
    for i in range(count):
        if i < len(special):
            name, charset, roles = special[i]
        else:
            name, charset, roles = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}", ascii_cs, ()
        birth = f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sex = rng.choice("MMMFFFO")
        issuer = rng.choice(["HOSP_A", "HOSP_A", "HOSP_A", "HOSP_B", None])
        pid = f"Q{10001 + i}"
        if name == "JONES^MARY":
            issuer = "HOSP_A"
        if name == "JONES^MARGARET":  # same PatientID as JONES^MARY, another issuer
            pid, issuer = f"Q{10001 + i - 1}", "HOSP_B"
        people.append(Patient(pid, name, birth, sex, charset, issuer, roles))
    people[16].birth = ""
    people[17].sex = ""

    # Studies per patient: 1 to 3, twice the patient count in total.
    per_patient = [2] * count
    order = list(range(count))
    rng.shuffle(order)
    for k in range(count // 3):
        per_patient[order[2 * k]] -= 1
        per_patient[order[2 * k + 1]] += 1
    per_patient[0] = max(per_patient[0], 2)  # SMITH^JOHN has several studies
    kinds = [k for k in QUERY_STUDY_KINDS for _ in range(k[1])]

    studies: list[Study] = []
    day0 = dt.date(2015, 1, 1)
    for p_index, patient in enumerate(people):
        for _ in range(per_patient[p_index]):
            index = len(studies) + 1
            modality, _w, descriptions, body, extra_mod = rng.choice(kinds)
            if index <= 10:
                date = "20240115"  # a cluster for date matching
            else:
                date = (day0 + dt.timedelta(days=rng.randrange(3834))).strftime("%Y%m%d")
            time = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
            if index == 11:
                time = "000000"
            elif index == 12:
                time = "235959"
            fmt = rng.randrange(4)
            roles: tuple[str, ...] = ()
            if index % 37 == 5:
                accession = ""
                roles = ("empty-accession",)
            elif fmt == 0:
                accession = f"A{index:08d}"
            elif fmt == 1:
                accession = f"ACC{date[:4]}{index:05d}"
            elif fmt == 2:
                accession = f"{7000000 + index}"
            else:
                accession = f"RAD-{date[2:4]}-{index:04d}"
            description = rng.choice(descriptions)
            study = Study(
                index, patient, date, time, accession, str(index), description,
                rng.choice(REFERRERS), rng.choice(INSTITUTIONS),
                (f"P{modality}{descriptions.index(description)}", description), roles=roles,
            )
            n_series = rng.randint(1, 2)
            for number in range(1, n_series + 1):
                mod = modality
                if number == 2 and extra_mod is not None:
                    mod = extra_mod
                study.series.append(Series(
                    number, mod, f"{description} S{number}", tiny_image(mod),
                    rng.randint(1, 3), body if mod == modality else "",
                    f"{mod}-{rng.randint(1, 4)}", rng.choice(["ACME MEDICAL", "GLOBEX", "INITECH"]),
                    minutes=2 + 5 * number,
                ))
            studies.append(study)
    return studies


def profile_scale(seed: int, patients: int | None) -> list[Study]:
    rng = random.Random(f"scale/{seed}")
    count = patients if patients is not None else 20
    studies: list[Study] = []
    day0 = dt.date(2010, 1, 1)
    for i in range(count):
        patient = Patient(
            f"S{i + 1:07d}", f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
            f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            rng.choice("MF"), "ISO_IR 100", "SCALE",
        )
        for _ in range(5):
            index = len(studies) + 1
            modality = rng.choice(["CT", "MR"])
            date = (day0 + dt.timedelta(days=rng.randrange(5500))).strftime("%Y%m%d")
            study = Study(
                index, patient, date, f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}00",
                f"SC{index:09d}", str(index), f"{modality} ROUTINE", rng.choice(REFERRERS),
                rng.choice(INSTITUTIONS), (f"S{modality}", f"{modality} routine"),
            )
            for number in (1, 2):
                study.series.append(Series(number, modality, f"{modality} series {number}",
                                           Image(8, 8), 5, "CHEST", f"{modality}-SCALE",
                                           minutes=2 + 5 * number))
            studies.append(study)
    return studies


PROFILES = {
    "small": profile_small,
    "ct": profile_ct,
    "mixed": profile_mixed,
    "query": profile_query,
    "scale": profile_scale,
    "huge": profile_huge,
}


# ---------------------------------------------------------------------------------
# Output


def write_corpus(out_dir: str, profile: str, seed: int, patients: int | None, manifest: bool) -> tuple[int, int]:
    uids = Uids(profile, seed)
    studies = PROFILES[profile](seed, patients)
    entries = []
    files = total = 0
    for study in studies:
        for series in study.series:
            folder = os.path.join(out_dir, study.patient.pid, uids.study(study.index),
                                  uids.series(study.index, series.number))
            os.makedirs(folder, exist_ok=True)
            for number in range(1, series.count + 1):
                ds, ts, roles = build_instance(uids, study, series, number)
                path = os.path.join(folder, f"{number}.dcm")
                ds.save_as(path, enforce_file_format=True)
                files += 1
                total += os.path.getsize(path)
                if manifest:
                    entries.append({
                        "path": os.path.relpath(path, out_dir).replace(os.sep, "/"),
                        "SOPInstanceUID": ds.SOPInstanceUID,
                        "SOPClassUID": ds.SOPClassUID,
                        "StudyInstanceUID": ds.StudyInstanceUID,
                        "SeriesInstanceUID": ds.SeriesInstanceUID,
                        "PatientID": ds.PatientID,
                        "IssuerOfPatientID": study.patient.issuer,
                        "PatientName": study.patient.name,
                        "Modality": series.modality,
                        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
                        "SpecificCharacterSet": charset_text(study.patient.charset),
                        "NumberOfFrames": series.image.frames,
                        "Roles": roles,
                    })
    if manifest:
        doc = {
            "generator": "tests/corpus/gen_corpus.py",
            "pydicom": pydicom.__version__,
            "profile": profile,
            "seed": seed,
            "files": entries,
        }
        with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
    return files, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate a deterministic synthetic DICOM corpus (see the module docstring).")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="small")
    parser.add_argument("--seed", type=int, default=0, help=f"0..{MAX_SEED} (default 0)")
    parser.add_argument("--patients", type=int, default=None,
                        help="patient count for the query (default 60) and scale (default 20) profiles")
    parser.add_argument("--manifest", action="store_true", help="also write OUT_DIR/manifest.json")
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be in 0..{MAX_SEED}")
    if args.patients is not None:
        if args.profile not in ("query", "scale"):
            parser.error("--patients applies only to the query and scale profiles")
        if args.patients < 1:
            parser.error("--patients must be at least 1")
    os.makedirs(args.out_dir, exist_ok=True)
    files, total = write_corpus(args.out_dir, args.profile, args.seed, args.patients, args.manifest)
    print(f"{files} files, {total / 1e6:.1f} MB in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
