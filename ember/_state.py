"""Global autograd switches, read on every op call (one attribute lookup)."""


class _State:
    enabled = True          # grad mode
    inference = False       # inference_mode
    anomaly = False         # detect_anomaly
    anomaly_check_nan = True
    autocast = None         # {device_type: dtype} inside ember.autocast regions
