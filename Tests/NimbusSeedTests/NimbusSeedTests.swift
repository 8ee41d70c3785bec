// Tests of NimbusSeed.
