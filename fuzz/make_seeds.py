#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs: well-formed P-DATA streams carrying C-STORE requests
of small data sets in each transfer syntax, and the command sets alone. Random bytes almost
never form a PDU, so without seeds the PDU-to-index target would not get past dicom-ul's
parser. Run from anywhere; needs pydicom."""
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
print("seeds written")
