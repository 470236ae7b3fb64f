"""From a trained model to masks: the only name -> model loader
(:func:`~lungseg.inference.segmenter.load_model`), the networks it runs (PyTorch, ONNX Runtime,
test-time augmentation), postprocessing, and the one road every image takes
(:mod:`~lungseg.inference.road`: decode -> preprocess -> forward -> postprocess -> measure ->
encode), which ``segment``, ``serve``, ``evaluate`` and the DICOM node all call.
"""

#: The postprocessing preset of a model that records none, and of a new training run: the
#: study's (:mod:`~lungseg.inference.postprocessing`). Here, where the command line's help reads
#: it without loading NumPy.
DEFAULT_POSTPROCESS = "seed"
