"""Runs Nordic's device_credentials_installer (nrfcloud-utils) against a pseudo-terminal.

The installer only lists USB serial ports; this wrapper points its port lookup at the
pty given as --port (PEERS.md) and changes nothing else. Usage: same arguments as
`device_credentials_installer`.
"""
import os
import sys

from serial.tools.list_ports_common import ListPortInfo
import nrfcredstore.comms as comms
from nrfcloud_utils import device_credentials_installer

port = sys.argv[sys.argv.index("--port") + 1]
real = os.path.realpath(port)
comms.get_comports_fixed_ordering = lambda: [ListPortInfo(real, skip_link_detection=True)]

device_credentials_installer.main(sys.argv[1:])
