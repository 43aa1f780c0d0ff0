"""One module per dataset, each a TFDS builder (or an existing TFDS dataset) and its `source(config)`.

The registry (mlc_jax.data.registry) imports them on demand: `shapes` never imports the COCO code.
"""
