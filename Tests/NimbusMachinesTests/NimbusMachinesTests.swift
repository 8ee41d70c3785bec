// Tests of NimbusMachines.
