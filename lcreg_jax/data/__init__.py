"""Long-tailed data: protocol (longtail), raw sources (sources), tf.data input (pipeline).

Submodules are not imported here so that `longtail` stays usable without
pulling in TensorFlow or JAX.
"""
