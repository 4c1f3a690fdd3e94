"""Reads onboard.csv files back with nrfcloud-utils' own CSV code.

read_onboarding_csv (what `nrf_cloud_onboard` uploads from) gives the device ids and
refuses a file of more than 1000 rows; check_if_device_exists_in_csv (what
`device_credentials_installer --append` uses) gives each device's full row.
Prints [{file, rows: [[deviceId, subType, tags, fwTypes, pem], ...]}] on stdout.
"""
import json
import sys

from nrfcloud_utils.cli_helpers import check_if_device_exists_in_csv
from nrfcloud_utils.nrf_cloud_onboard import read_onboarding_csv

out = []
for path in sys.argv[1:]:
    devices = read_onboarding_csv(path)
    if devices is None:
        out.append({"file": path, "refused": True, "rows": []})
        continue
    rows = []
    for dev_id, _ in devices:
        found, count = check_if_device_exists_in_csv(path, dev_id, False)
        assert count == len(devices), (count, len(devices))
        rows.extend(found)
    out.append({"file": path, "rows": rows})
json.dump(out, sys.stdout)
