"""Where files live: one interface for reading a dataset (:mod:`~lungseg.storage.sources`:
list keys, read bytes) and one for writing results (:mod:`~lungseg.storage.sink`: whole-file
puts, locks), each with a local folder and Azure Blob Storage (:mod:`~lungseg.storage.azure`)
behind it. A new back-end implements those two protocols and is opened by URL scheme in
``open_source`` and ``open_sink``.
"""
