"""Small synthetic CT instances made with pydicom, for tests that need many distinct UIDs
(the crash test, C-CANCEL, bad input). Deterministic for a given seed."""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

# Under the corpus generator's root, in a branch (.90) its profiles never use.
ROOT = "1.2.826.0.1.3680043.10.543.90"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def uid(*parts: int) -> str:
    u = ".".join([ROOT, *map(str, parts)])
    assert len(u) <= 64, u
    return u


def ct_instance(*, patient_id: str, study_uid: str, series_uid: str, sop_uid: str,
                instance_number: int = 1, rows: int = 16, cols: int = 16, seed: int = 0,
                patient_name: str = "SYNTH^PATIENT", study_date: str = "20240101") -> bytes:
    """A Part 10 CT image, Explicit VR Little Endian, 16-bit noise of rows x cols."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"A{zlib.crc32(study_uid.encode()) % 10**8:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "OUTPOST TESTS"
    ds.StudyDescription = "SYNTHETIC"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = random.Random(f"{seed}:{sop_uid}").randbytes(rows * cols * 2)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = ROOT + ".0"
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def variants(count: int, start: int = 100000, **kw) -> list[bytes]:
    """`count` one-instance studies, fast: one instance made with pydicom, the others by
    replacing its UIDs and patient ID with others of the same length (fixed-width numbers).
    Study i has study/series/SOP UIDs uid(1|2|3, start + i) and patient ID P<start + i>."""
    assert start + count < 10 * start, "numbers must keep their width"
    first = ct_instance(patient_id=f"P{start}", study_uid=uid(1, start),
                        series_uid=uid(2, start), sop_uid=uid(3, start), **kw)
    out = [first]
    for i in range(1, count):
        n = start + i
        data = first
        for old, new in ((uid(1, start), uid(1, n)), (uid(2, start), uid(2, n)),
                         (uid(3, start), uid(3, n)), (f"P{start}", f"P{n}")):
            assert len(old) == len(new)
            data = data.replace(old.encode(), new.encode())
        out.append(data)
    return out
