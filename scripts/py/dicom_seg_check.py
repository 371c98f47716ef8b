"""A DICOM SEG and Parametric Map read back by pydicom and highdicom, for fracmap-dicom's
cross-checks.

Usage: dicom_seg_check.py SEG PARAMETRIC_MAP PM_RAW SOURCE_UID...
SOURCE_UID: the source CT's SOP instance UIDs in slice order. Writes the parametric map's
values (float32, frames x rows x columns) to PM_RAW and prints one JSON object: what pydicom
reads (geometry, references, identifiers, the mask's set voxels as flat indices) and what
highdicom reads (the mask by source instance, the segment, the volume's affine).
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom


def geometry(ds):
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.PerFrameFunctionalGroupsSequence
    return {
        "orientation": list(map(float, shared.PlaneOrientationSequence[0].ImageOrientationPatient)),
        "pixel_spacing": list(map(float, shared.PixelMeasuresSequence[0].PixelSpacing)),
        "spacing_between_slices": float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices),
        "positions": [list(map(float, f.PlanePositionSequence[0].ImagePositionPatient)) for f in frames],
        "source_instances": [
            f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in frames
        ],
        "frame_of_reference_uid": ds.FrameOfReferenceUID,
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "referenced_series_uid": ds.ReferencedSeriesSequence[0].SeriesInstanceUID,
        "patient_name": str(ds.PatientName),
        "patient_id": ds.PatientID,
        "modality": ds.Modality,
        "sop_class_uid": ds.SOPClassUID,
        "shape": [int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)],
    }


def main():
    seg_path, pm_path, pm_raw, source_uids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    seg = pydicom.dcmread(seg_path)
    mask = seg.pixel_array.reshape(-1)
    result = {"seg": geometry(seg)}
    result["seg"]["mask_indices"] = np.flatnonzero(mask).tolist()
    result["seg"]["segment_label"] = seg.SegmentSequence[0].SegmentLabel

    hd_seg = hd.seg.segread(seg_path)
    by_source = hd_seg.get_pixels_by_source_instance(source_uids, segment_numbers=[1])
    volume = hd_seg.get_volume()
    result["highdicom"] = {
        "mask_indices": np.flatnonzero(by_source[..., 0].reshape(-1)).tolist(),
        "segment_label": hd_seg.get_segment_description(1).segment_label,
        "segmentation_type": hd_seg.segmentation_type.value,
        "volume_shape": list(volume.spatial_shape),
        "volume_affine": volume.affine.tolist(),
    }

    pm = pydicom.dcmread(pm_path)
    pm.pixel_array.astype("<f4").tofile(pm_raw)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    result["parametric_map"] = geometry(pm)
    result["parametric_map"]["real_world_slope"] = float(mapping.RealWorldValueSlope)
    result["parametric_map"]["real_world_intercept"] = float(mapping.RealWorldValueIntercept)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
