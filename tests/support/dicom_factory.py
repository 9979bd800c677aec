"""Synthetic DICOM Part-10 files built in memory with pydicom.

Every function returns the encoded file as ``bytes``. UIDs are random unless a
``seed`` is given, in which case they are derived deterministically from it, so
two Orthanc servers fed the same seed compute the same Orthanc identifiers.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import List, Optional

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
MULTIFRAME_TRUE_COLOR_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3


def make_uid(seed: Optional[str] = None, *parts: object) -> str:
    """A new random UID, or one derived from ``seed`` and ``parts`` if ``seed`` is given."""
    if seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=[seed, *map(str, parts)]))


def pixel_bytes(instance_number: int, rows: int = 32, columns: int = 32, frames: int = 1) -> bytes:
    """16-bit little-endian pixel data: a gradient that depends on instance and frame number."""
    values = [
        (instance_number * 500 + frame * 150 + x * 37 + y * 53) % 4096
        for frame in range(frames)
        for y in range(rows)
        for x in range(columns)
    ]
    return struct.pack("<%dH" % len(values), *values)


def minimal_pdf(text: str = "orthanc-cache-plugin test") -> bytes:
    """A tiny but valid one-page PDF (correct xref offsets) showing ``text``."""
    stream = b"BT /F1 12 Tf 20 50 Td (" + text.encode("latin-1") + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1,
                                                                               xref)
    return bytes(out)


def _base_dataset(
    sop_class_uid: str,
    sop_instance_uid: str,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    modality: str,
    series_number: int,
    instance_number: int,
    series_description: str,
) -> Dataset:
    """Patient, study, series and SOP common modules shared by all instances."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.StudyDescription = "Synthetic study"
    ds.AccessionNumber = "ACC" + patient_id[-8:]
    ds.ReferringPhysicianName = "Referrer^Test"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.Modality = modality
    ds.Manufacturer = "orthanc-cache-plugin tests"
    ds.InstanceNumber = instance_number
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    return ds


def _encode(ds: Dataset) -> bytes:
    """Encode ``ds`` as a Part-10 file (preamble, DICM prefix, file meta)."""
    buffer = BytesIO()
    if _PYDICOM_3:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.preamble = b"\x00" * 128
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(buffer, write_like_original=False)
    return buffer.getvalue()


def make_instance(
    patient_id: str = "PAT-0001",
    *,
    patient_name: str = "Doe^John",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    series_number: int = 1,
    instance_number: int = 1,
    modality: str = "CT",
    series_description: Optional[str] = None,
    frames: int = 1,
    rows: int = 32,
    columns: int = 32,
    rgb: bool = False,
    seed: Optional[str] = None,
) -> bytes:
    """One 16-bit MONOCHROME2 image, or 8-bit RGB with ``rgb``; multi-frame when ``frames > 1``.

    Missing UIDs are generated (from ``seed`` if given).
    """
    study_uid = study_uid or make_uid(seed, "study")
    series_uid = series_uid or make_uid(seed, "series", series_number)
    sop_uid = sop_uid or make_uid(seed, "series", series_number, "instance", instance_number)
    if rgb:
        sop_class = MULTIFRAME_TRUE_COLOR_SC_STORAGE
    else:
        sop_class = CT_IMAGE_STORAGE if frames == 1 else MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE

    ds = _base_dataset(
        sop_class, sop_uid, patient_id, patient_name, study_uid, series_uid, modality,
        series_number, instance_number, series_description or f"Series {series_number}",
    )
    ds.FrameOfReferenceUID = make_uid(series_uid, "frame-of-reference")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number) * 2.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 2.5
    ds.SliceLocation = float(instance_number) * 2.5
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_bytes(instance_number, rows, columns, frames)
    ds["PixelData"].VR = "OW"
    if rgb:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        del ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth
        # Three 8-bit samples per pixel, taken from the 16-bit gradient.
        ds.PixelData = pixel_bytes(instance_number, rows, columns * 3, frames)[::2]
        ds["PixelData"].VR = "OB"
    return _encode(ds)


def make_pdf_instance(
    patient_id: str = "PAT-0001",
    *,
    patient_name: str = "Doe^John",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    series_number: int = 99,
    pdf: Optional[bytes] = None,
    seed: Optional[str] = None,
) -> bytes:
    """An Encapsulated PDF instance (no pixel data) in its own series."""
    study_uid = study_uid or make_uid(seed, "study")
    series_uid = series_uid or make_uid(seed, "series", series_number)
    sop_uid = sop_uid or make_uid(seed, "series", series_number, "pdf")
    document = pdf if pdf is not None else minimal_pdf()

    ds = _base_dataset(
        ENCAPSULATED_PDF_STORAGE, sop_uid, patient_id, patient_name, study_uid, series_uid,
        "DOC", series_number, 1, "Report",
    )
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Synthetic report"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    return _encode(ds)


def make_study(
    patient_id: str,
    n_series: int,
    n_instances: int,
    frames: int = 1,
    study_uid: Optional[str] = None,
    *,
    patient_name: str = "Doe^John",
    modality: str = "CT",
    seed: Optional[str] = None,
) -> List[bytes]:
    """``n_series`` x ``n_instances`` images of one study, series-major order."""
    study_uid = study_uid or make_uid(seed, "study")
    instances = []
    for series_number in range(1, n_series + 1):
        series_uid = make_uid(seed, "series", series_number)
        for instance_number in range(1, n_instances + 1):
            instances.append(
                make_instance(
                    patient_id,
                    patient_name=patient_name,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    series_number=series_number,
                    instance_number=instance_number,
                    modality=modality,
                    frames=frames,
                    seed=seed,
                )
            )
    return instances
