"""pypod's CRI (runtime.v1) protocol: ``cri.proto`` and its generated stubs (see ``generate``)."""
