"""DICOM in and out: what an X-ray's header means for measuring it (:mod:`~lungseg.dicom.header`),
and the objects lungseg writes beside a DICOM X-ray for a PACS - a Segmentation
(:mod:`~lungseg.dicom.seg`) and a TID 1500 measurement report (:mod:`~lungseg.dicom.sr`).

Writing needs ``lungseg[dicom]`` (highdicom); importing this package needs nothing.
"""
