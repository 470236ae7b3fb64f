"""``lungseg dicom-node``: lungseg as a DICOM node in a hospital's network.

A PACS, a router or a modality sends chest X-rays by C-STORE; the node spools each instance to
disk before it answers, segments the spool in micro-batches and sends the results (a DICOM
SEG and a TID 1500 SR per image) back by C-STORE or STOW-RS. The stages, one module each:

- :mod:`~lungseg.node.spool`: the on-disk state machine ``received -> segmented -> sent``;
- :mod:`~lungseg.node.scp`: the Storage SCP (who may send, what is accepted, what is skipped);
- :mod:`~lungseg.node.work`: the one function that runs the model on a batch of instances;
- :mod:`~lungseg.node.send`: delivery to the destination, with retries and backoff;
- :mod:`~lungseg.node.service`: the threads that tie them together, and the status file.
"""
