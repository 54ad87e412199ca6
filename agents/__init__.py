"""clbench's own agents: the reference TN+EN agent and a template for plug-in authors."""
