"""From a slide to its patches: tissue detection, the patch grid, regions of interest, artifact QC."""
