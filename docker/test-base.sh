#!/usr/bin/env bash
# Build a minimal local base image (Debian bookworm with python3) for testing the Dockerfile
# where no image registry is reachable; prints only the image's tag on stdout:
#     docker/test-base.sh [TAG]            # TAG defaults to flare22-test-base:bookworm
#     docker/test-base.sh --print-mirror   # print the Debian mirror it would use, build nothing
# The mirror debootstrap fetches from is, first found:
#   1. DEBIAN_MIRROR, if set (e.g. DEBIAN_MIRROR=http://mirror.example/debian);
#   2. this machine's own apt sources, where a registry-less CI machine names the mirror it can
#      reach: the first "deb" entry for suite bookworm whose URI is http(s) or file and not a
#      security archive, read in apt's order (sources.list, then sources.list.d/*.list and
#      *.sources, deb822 stanzas with "Enabled: no" skipped) under $APT_ROOT/etc/apt (APT_ROOT
#      is empty, i.e. /, unless a test points it at a fake configuration);
#   3. http://deb.debian.org/debian.
set -euo pipefail

suite=bookworm
fallback=http://deb.debian.org/debian

# First usable URI of one-line sources ("deb [options] URI suite components...").
one_line_mirror() {
    awk -v suite="$suite" '
        { sub(/#.*/, "") }
        $1 != "deb" { next }
        {
            i = 2
            if ($i ~ /^\[/) {  # options, possibly spread over several fields: "[ arch=amd64 ]"
                while (i <= NF && $i !~ /\]$/) i++
                i++
            }
            uri = $i; s = $(i + 1)
            if (s == suite && uri ~ /^(https?|file):/ && uri !~ /security/) { print uri; exit }
        }
    ' "$1"
}

# First usable URI of deb822 stanzas (Types/URIs/Suites/Enabled fields, blank-line separated).
deb822_mirror() {
    awk -v suite="$suite" '
        function check(   n, i, types, uris, suites, has_deb, has_suite) {
            has_deb = has_suite = 0
            n = split(field["types"], types, /[ \t]+/)
            for (i = 1; i <= n; i++) if (types[i] == "deb") has_deb = 1
            n = split(field["suites"], suites, /[ \t]+/)
            for (i = 1; i <= n; i++) if (suites[i] == suite) has_suite = 1
            if (has_deb && has_suite && tolower(field["enabled"]) !~ /^[ \t]*no/) {
                n = split(field["uris"], uris, /[ \t]+/)
                for (i = 1; i <= n; i++)
                    if (uris[i] ~ /^(https?|file):/ && uris[i] !~ /security/) {
                        print uris[i]; found = 1; exit
                    }
            }
            delete field; key = ""
        }
        /^#/ { next }
        /^[ \t]*$/ { check(); next }
        /^[ \t]/ { if (key != "") field[key] = field[key] " " $0; next }  # a folded line
        {
            key = tolower(substr($0, 1, index($0, ":") - 1))
            field[key] = substr($0, index($0, ":") + 1)
        }
        END { if (!found) check() }
    ' "$1"
}

apt_mirror() {
    local apt=${APT_ROOT:-}/etc/apt file mirror
    local files=("$apt/sources.list")
    shopt -s nullglob
    # apt reads sources.list.d in file-name order, both formats mixed.
    files+=("$apt"/sources.list.d/*)
    shopt -u nullglob
    for file in "${files[@]}"; do
        [[ -f $file ]] || continue
        case $file in
            */sources.list | *.list) mirror=$(one_line_mirror "$file") ;;
            *.sources) mirror=$(deb822_mirror "$file") ;;
            *) continue ;;  # apt ignores other names (*.disabled, *.save)
        esac
        if [[ -n $mirror ]]; then
            echo "$mirror"
            return
        fi
    done
}

choose_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local mirror
    mirror=$(apt_mirror)
    echo "${mirror:-$fallback}"
}

if [[ ${1:-} == --print-mirror ]]; then
    choose_mirror
    exit 0
fi

tag=${1:-flare22-test-base:bookworm}
mirror=$(choose_mirror)
echo "test-base.sh: debootstrap $suite from $mirror" >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root" "$mirror" >/dev/null
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "$tag"
