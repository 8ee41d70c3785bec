# shellcheck shell=bash
# guest-common.bash — sourced by scripts/build-guest-image, scripts/build-coreos-image
# and scripts/lib/debootstrap-base: the host's Debian mirror and the cache's
# completeness test. The sourcing script defines log() and die(). This file is
# part of each of those scripts' recipe (its hash keys their caches).

# Prints "URI SUITE" lines for every deb source of this host's apt configuration.
host_apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -e 's/#.*//' "$f" | awk '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        print $i, $(i + 1) }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822: paragraphs separated by blank lines; Enabled: no skips one.
    awk 'function flush() {
           if (types ~ /(^| )deb( |$)/ && enabled != "no")
             { n = split(uris, u, " "); m = split(suites, s, " ");
               for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b] }
           types = uris = suites = ""; enabled = "" }
         /^[[:space:]]*#/ { next }
         /^[[:space:]]*$/ { flush(); next }
         { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
           if (key == "types") types = $0; else if (key == "uris") uris = $0
           else if (key == "suites") suites = $0; else if (key == "enabled") enabled = tolower($0) }
         END { flush() }' "$f"
  done
}

# Sets the globals mirror and security_mirror (no trailing slash) for suite $1:
# NIMBUS_GUEST_MIRROR / NIMBUS_GUEST_SECURITY_MIRROR, else this host's apt sources.
resolve_mirrors() {
  local suite=$1
  mirror=${NIMBUS_GUEST_MIRROR:-}
  security_mirror=${NIMBUS_GUEST_SECURITY_MIRROR:-}
  if [[ -z $mirror ]]; then
    mirror=$(host_apt_sources | awk -v s="$suite" '$2 == s { print $1; exit }')
    [[ -n $mirror ]] || mirror=$(host_apt_sources | awk '$1 ~ /\/debian\/?$/ { print $1; exit }')
  fi
  if [[ -z $security_mirror ]]; then
    security_mirror=$(host_apt_sources | awk -v s="$suite-security" '$2 == s { print $1; exit }')
  fi
  [[ -n $mirror ]] || die "no Debian mirror for $suite in /etc/apt/sources.list{,.d/*}; set NIMBUS_GUEST_MIRROR=http://MIRROR/debian"
  mirror=${mirror%/}
  security_mirror=${security_mirror%/}
}

# True when folder $1 holds a SHA256SUMS that verifies.
is_complete() {
  [[ -f $1/SHA256SUMS ]] && (cd "$1" && sha256sum --check --quiet --strict SHA256SUMS) >/dev/null 2>&1
}

# The sha256 of the concatenation of the given files (a recipe's key).
recipe_sha256() {
  cat "$@" | sha256sum | cut -d' ' -f1
}
