"""Double-only helpers (not part of HailoRT): the control file, the event record, the HEF format.

    from hailo_platform._double import events, write_control, read_log
"""

from hailo_platform._double.control import FIELDS, events, read_log, record, write_control

__all__ = ["FIELDS", "events", "read_log", "record", "write_control"]
