"""cloud-init's EC2 datasource (Debian's package), run as cloud-init runs it at boot, inside a
guest namespace; prints what it found as one JSON object.

Run with Debian's ``/usr/bin/python3``, which has the package's ``cloudinit``. The datasource is
constructed and asked exactly as ``cloud-init init`` does (``get_data``, then ``network_config``,
``get_instance_id``, ``get_public_ssh_keys``), with a throwaway state directory; nothing is
written to the system. Which way it talks (IMDSv2 tokens or IMDSv1) is cloud-init's own choice
from the platform it identifies: AWS when ``/sys/hypervisor/uuid`` starts with ``ec2``.
"""

import base64
import json
import logging
import sys
import tempfile
import time

from cloudinit import distros, helpers
from cloudinit.sources import DataSourceEc2

logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
state = tempfile.mkdtemp(prefix="cloud-init-")
paths = helpers.Paths({"cloud_dir": state, "run_dir": state})
settings = {
    "datasource": {
        "Ec2": {"metadata_urls": ["http://169.254.169.254"], "max_wait": 20, "timeout": 5}
    }
}
distro = distros.fetch("debian")("debian", {}, paths)
source = DataSourceEc2.DataSourceEc2(settings, distro, paths)
started = time.monotonic()
found = source.get_data()
crawl_seconds = time.monotonic() - started
result = {"found": found, "cloud_name": source.cloud_name, "crawl_seconds": crawl_seconds}
if found:
    crawled = source._crawled_metadata or {}
    result.update(
        instance_id=source.get_instance_id(),
        api_version=crawled.get("_metadata_api_version"),
        user_data=base64.b64encode(source.get_userdata_raw() or b"").decode(),
        public_keys=source.get_public_ssh_keys(),
        network_config=source.network_config,
        local_hostname=source.get_hostname().hostname,
        availability_zone=source.availability_zone,
        region=source.region,
        identity=source.identity,
        token_used=source._api_token is not None,
        meta_data_keys=sorted(source.metadata),
    )
print(json.dumps(result, default=str))
