"""INT8 graphs calibrated on calib_data/ and the accuracy they cost. (Issue 4; not built yet.)"""
