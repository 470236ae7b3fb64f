"""DICOM results a PACS files and a viewer shows: the Segmentation object of an image's lungs
(:mod:`~lungseg.dicom.seg`), made on the road every image takes (:mod:`lungseg.inference.road`).
"""
