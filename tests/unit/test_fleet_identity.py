"""Fleet identity: host ids, and what a path is across hosts (mountinfo lines
as Linux writes them for each kind of shared filesystem)."""

from __future__ import annotations

import pytest

from provtrace.tracer.fleet import identity as I
from provtrace.tracer.fleet.db import FleetError

MOUNTINFO = r"""
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /mnt/nfs rw,relatime shared:20 - nfs4 filer.example:/export/team rw,vers=4.2
41 22 0:41 /sub/dir /mnt/nfs-sub rw,relatime shared:21 - nfs filer.example:/export rw,vers=3
42 22 0:42 / /mnt/smb rw,relatime shared:22 - cifs //winsrv/share rw
43 22 0:43 / /mnt/ceph rw,relatime shared:23 - ceph 10.0.0.1:6789,10.0.0.2:6789:/volumes/a rw
44 22 0:44 / /lustre rw shared:24 - lustre 10.0.0.9@tcp:/scratch rw
45 22 0:45 / /mnt/gcs rw shared:25 - fuse.gcsfuse my-bucket rw,user_id=0
46 22 0:46 / /mnt/s3 rw shared:26 - fuse.s3fs s3fs rw,user_id=0
47 22 0:47 / /mnt/with\040space rw shared:27 - nfs4 filer.example:/export/sp rw
48 22 0:48 / /tmp rw shared:28 - tmpfs tmpfs rw
"""


@pytest.fixture
def keyer():
    return I.Keyer("host-a", mounts=I.parse_mountinfo(MOUNTINFO), shared=["/srv/shared"])


@pytest.mark.parametrize("path,key", [
    ("/mnt/nfs/x/data.csv", "nfs://filer.example:/export/team/x/data.csv"),
    ("/mnt/nfs-sub/f", "nfs://filer.example:/export/sub/dir/f"),            # a subtree mount: same file
    ("/mnt/smb/r.txt", "smb://winsrv/share/r.txt"),
    ("/mnt/ceph/v", "ceph://10.0.0.1:6789,10.0.0.2:6789:/volumes/a/v"),
    ("/lustre/run/1", "lustre://10.0.0.9@tcp:/scratch/run/1"),
    ("/mnt/gcs/obj", "gs://my-bucket/obj"),
    ("/mnt/s3/obj", "s3://mount/mnt/s3/obj"),                                # s3fs hides its bucket
    ("/mnt/with space/f", "nfs://filer.example:/export/sp/f"),
    ("/srv/shared/a/b", "shared:/srv/shared/a/b"),                          # declared prefix
    ("/home/u/local.csv", "host:host-a:/home/u/local.csv"),                 # host-scoped
    ("/tmp/x", "host:host-a:/tmp/x"),
])
def test_keys(keyer, path, key):
    assert keyer.key(path.encode()) == (key, not key.startswith("host:"))


def test_two_hosts_mounting_one_export_differently_meet():
    a = I.Keyer("a", mounts=I.parse_mountinfo("1 0 0:1 / /mnt/team rw - nfs4 filer:/export rw"), shared=[])
    b = I.Keyer("b", mounts=I.parse_mountinfo("1 0 0:1 / /data rw - nfs filer:/export rw"), shared=[])
    assert a.key(b"/mnt/team/x.csv") == b.key(b"/data/x.csv")


def test_non_utf8_path_keeps_its_bytes_escaped(keyer):
    assert keyer.key(b"/home/u/\xff.csv") == ("host:host-a:/home/u/\\xff.csv", False)


def test_host_id_sources(tmp_path, monkeypatch):
    mid = tmp_path / "machine-id"
    mid.write_text("0123abcd\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    monkeypatch.setenv("PROVTRACE_CONFIG", str(cfg))
    monkeypatch.setenv("PROVTRACE_SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    assert I.host_id(machine_id_path=str(mid)) == "0123abcd"
    cfg.write_text('[fleet]\nhost_id = "jhub-7"\nshared = ["/srv/x/"]\n')
    assert I.host_id(machine_id_path=str(mid)) == "jhub-7"
    assert I.shared_prefixes() == ["/srv/x"]
    assert I.host_id("cli-given") == "cli-given"
    with pytest.raises(FleetError, match="host id"):
        I.host_id("has space")
    cfg.write_text("[fleet]\nshared = \"/srv\"\n")
    with pytest.raises(Exception, match=r"\[fleet\] shared must be a list"):
        I.shared_prefixes()
