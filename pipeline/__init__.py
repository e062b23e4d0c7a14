"""Ray Data stages that turn raw stickers into a curated dataset; the chain is in `pipeline.runner`."""
