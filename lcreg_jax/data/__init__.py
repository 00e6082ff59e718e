"""Long-tailed data: the protocol (longtail), raw sources (sources), sampling
(samplers), augmentation (augment), tf.data input (pipeline) and the interface
the rest of the package uses (dataset).

Submodules are not imported here so that `longtail` stays usable without
pulling in TensorFlow or JAX.
"""
