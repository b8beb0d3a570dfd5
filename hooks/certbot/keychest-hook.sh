#!/usr/bin/env bash
# keychest-hook.sh - certbot hook: put the domains certbot issued or renewed under
# keychest certificate monitoring. Needs only bash, coreutils, grep and sed; it talks to
# the keychest line API (TCP, default port 10023) through /dev/tcp, or over TLS through
# `openssl s_client` when KEYCHEST_TLS=1.
#
# Use it as any of (certbot 2.x and 5.x):
#   /etc/letsencrypt/renewal-hooks/post/keychest-hook.sh     (post: every lineage of the run)
#   /etc/letsencrypt/renewal-hooks/deploy/keychest-hook.sh   (deploy: once per renewed lineage)
#   certbot ... --post-hook "/path/keychest-hook.sh post"    (or --deploy-hook ".../keychest-hook.sh deploy")
#   keychest-hook.sh all      register every certificate certbot manages (e.g. once, after installing)
#   lego ... run --run-hook /path/keychest-hook.sh    (and renew --renew-hook: LEGO_CERT_DOMAIN/_PATH)
#   dehydrated: HOOK=/path/keychest-hook.sh           (deploy_cert reports a renewal,
#                                                      invalid_challenge a failure; other calls do nothing)
#
# What it does: finds the domains (RENEWED_DOMAINS of a deploy hook; for a post hook
# certbot's log of the current run, completed from the lineage's certificate), finds an
# email (setting, Let's Encrypt account, renewal-hooks/keychest_email, else a placeholder
# at the server's mail domain), then: `command apikey` once, `command claim`, and
# `command add` per domain, and `command renewal` for what certbot renewed (with the new
# certificate's SHA-256) or failed to renew. State (API key, claim) lives in renewal-hooks/keychest_apikey
# (mode 600); undelivered domains wait in renewal-hooks/keychest_spool for the next run.
# It never fails certbot: it exits 0 and the whole run is bounded (KEYCHEST_TIME_BUDGET + 3 s).
# It runs as root and trusts nothing it reads: see docs/hook.md, "What it defends".

# ---- settings: `keychest hook install` fills these in; KEYCHEST_* variables override all
KEYCHEST_SERVER=${KEYCHEST_SERVER:-keychest.example.net}
KEYCHEST_PORT=${KEYCHEST_PORT:-10023}
KEYCHEST_EMAIL=${KEYCHEST_EMAIL:-}
KEYCHEST_TLS=${KEYCHEST_TLS:-0}
KEYCHEST_PIN=${KEYCHEST_PIN:-}
KEYCHEST_CA_FILE=${KEYCHEST_CA_FILE:-}
# KEYCHEST_TLS=1: the line API over TLS (`keychest serve --line-tls-listen`), through openssl;
# the server is known by KEYCHEST_PIN=sha256//<base64 SHA-256 of its public key> (a pin
# implies TLS), else by its certificate for KEYCHEST_SERVER issued by KEYCHEST_CA_FILE (a CA
# file implies TLS), else by the system's CAs. Without TLS: plain TCP (trusted networks only).
KEYCHEST_STATE_FILE=${KEYCHEST_STATE_FILE:-}        # default: <certbot config>/renewal-hooks/keychest_apikey
KEYCHEST_LOG=${KEYCHEST_LOG:-}                      # default: <certbot logs dir>/keychest-hook.log
KEYCHEST_CERTBOT_DIR=${KEYCHEST_CERTBOT_DIR:-}      # certbot --config-dir; found from certbot when empty
KEYCHEST_CERTBOT_LOGS=${KEYCHEST_CERTBOT_LOGS:-}    # certbot --logs-dir; found from certbot when empty
KEYCHEST_CONNECT_TIMEOUT=${KEYCHEST_CONNECT_TIMEOUT:-4}   # whole seconds
KEYCHEST_READ_TIMEOUT=${KEYCHEST_READ_TIMEOUT:-4}         # seconds per response
KEYCHEST_TIME_BUDGET=${KEYCHEST_TIME_BUDGET:-10}          # seconds for all network work of one run
KEYCHEST_QUIET=${KEYCHEST_QUIET:-0}                 # 1: log to the log file only, not to stderr
# ---- end of settings

# No `set -e`/`-u`: an unexpected failure must never turn into a non-zero exit for certbot.
umask 077        # every file the hook makes (state, spool, log, temp files) is root's alone
export LC_ALL=C  # byte semantics: [^ -~] below means "not printable ASCII", whatever the locale
set -f           # no file-name globbing: a wildcard "*.example.com" from certbot stays text
MODE=start
LOG_FILE=""
WORK=""
NET_OK=1
declare -a DOMAINS=()
declare -A SEEN=()
declare -A RENEWAL=()   # domain -> "renewed [SHA-256]" or "failed": what `command renewal` reports
KEY_SHAPE='^[0-9a-f]{8}(-[0-9a-f]{8}){4}$'   # what `command apikey` hands out, exactly
STORED_KEY_SHAPE='^[A-Za-z0-9-]{16,64}$'      # what the server accepts (a key written by hand)
MAX_DOMAINS=1000                              # per run, spool included
MAX_FILE=65536                                # bytes read of a state, spool, email, conf or cert file

clean() {  # clean TEXT [MAX]: CLEAN = TEXT with every byte but printable ASCII shown as '?', cut to MAX
  local max=${2:-300}
  CLEAN=${1//[^ -~]/?}
  ((${#CLEAN} <= max)) || CLEAN="${CLEAN:0:max}..."
}

log() {  # server text and file contents reach certbot's output and the log only through here
  local line
  clean "$*" 600
  printf -v line '%(%Y-%m-%dT%H:%M:%S%z)T keychest-hook[%s] %s: %s' -1 "$$" "$MODE" "$CLEAN"
  [[ $KEYCHEST_QUIET == 1 && -n $LOG_FILE ]] || printf '%s\n' "$line" >&2
  [[ -n $LOG_FILE ]] && printf '%s\n' "$line" >>"$LOG_FILE" 2>/dev/null
  return 0
}

now_ms() {  # NOW_MS = wall clock in ms, without forking (bash 5 EPOCHREALTIME; locale may use a comma)
  local t=${EPOCHREALTIME/[.,]/}
  NOW_MS=$(( ${t:-$((SECONDS * 1000000))} / 1000 ))
}

# ---------------------------------------------------------------- settings

whole_number() {  # whole_number NAME DEFAULT MIN MAX: NAME's value if a whole number in range, else DEFAULT
  local -n value=$1
  # checked before any arithmetic: bash evaluates `a[$(cmd)]` inside $((...))
  if [[ $value =~ ^[0-9]{1,5}$ ]] && ((10#$value >= $3 && 10#$value <= $4)); then
    value=$((10#$value))
  else
    log "setting $1='$value' is not a whole number from $3 to $4; using $2"
    value=$2
  fi
}

check_settings() {
  whole_number KEYCHEST_PORT 10023 1 65535
  whole_number KEYCHEST_CONNECT_TIMEOUT 4 1 60
  whole_number KEYCHEST_READ_TIMEOUT 4 1 60
  whole_number KEYCHEST_TIME_BUDGET 10 1 300
  [[ $KEYCHEST_QUIET == 1 ]] || KEYCHEST_QUIET=0
  if ! [[ $KEYCHEST_SERVER =~ ^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$ ]]; then
    log "setting KEYCHEST_SERVER='$KEYCHEST_SERVER' is not a host name or address; nothing will be sent"
    NET_OK=0
  fi
  # anything but 0/empty means TLS: a typo must not fall back to plain text
  if [[ -n $KEYCHEST_PIN || -n $KEYCHEST_CA_FILE || ( -n $KEYCHEST_TLS && $KEYCHEST_TLS != 0 ) ]]; then
    KEYCHEST_TLS=1
  else
    KEYCHEST_TLS=0
  fi
  if ((KEYCHEST_TLS)); then
    if ! command -v openssl >/dev/null 2>&1; then
      log "KEYCHEST_TLS=1 needs openssl, which is not installed; nothing will be sent"; NET_OK=0
    fi
    if [[ -n $KEYCHEST_PIN && ! $KEYCHEST_PIN =~ ^sha256//[A-Za-z0-9+/]{43}=$ ]]; then
      log "setting KEYCHEST_PIN='$KEYCHEST_PIN' is not sha256//<44 base64 characters>; nothing will be sent"; NET_OK=0
    fi
    if [[ -n $KEYCHEST_CA_FILE && ! ( -f $KEYCHEST_CA_FILE && -r $KEYCHEST_CA_FILE ) ]]; then
      log "setting KEYCHEST_CA_FILE='$KEYCHEST_CA_FILE' is not a readable file; nothing will be sent"; NET_OK=0
    fi
  fi
  SERVER_ID=$KEYCHEST_SERVER:$KEYCHEST_PORT
}

# ---------------------------------------------------------------- files

# The hook runs as root. A file it reads or writes must be out of other users' reach, or
# they could feed it text, or turn its writes elsewhere through a symlink, or hang it on a
# FIFO. "Ours": owned by the hook's user (root) and writable by nobody else.
ours() {  # ours PATH [-L]: PATH (with -L: what it points to) is ours
  local s
  s=$(stat ${2:+"$2"} -c '%u %a' -- "$1" 2>/dev/null) || return 1
  [[ ${s%% *} == "$EUID" ]] && ! ((8#${s#* } & 8#022))
}

safe_dir() { [[ -d $1 ]] && ours "$1" -L; }

parent_of() {  # PARENT = the folder of PATH
  PARENT=${1%/*}
  [[ $1 == */* ]] || PARENT=.
  [[ -n $PARENT ]] || PARENT=/
}

# One of the hook's own files: absent, or a regular file (not a symlink) of ours; in a
# folder of ours either way, so that nobody can swap it between the check and the use.
safe_file() {
  parent_of "$1"
  safe_dir "$PARENT" || return 1
  [[ -e $1 || -L $1 ]] || return 0
  [[ -f $1 && ! -L $1 ]] && ours "$1"
}

read_capped() { head -c "$MAX_FILE" -- "$1" 2>/dev/null; }

write_file() {  # write_file FILE LINES...: through a private temp file beside FILE, renamed over it
  local tmp
  parent_of "$1"
  if tmp=$(mktemp -- "$PARENT/.${1##*/}.XXXXXX" 2>/dev/null); then
    printf '%s\n' "${@:2}" >"$tmp" 2>/dev/null && mv -fT -- "$tmp" "$1" 2>/dev/null && return 0
    rm -f -- "$tmp"
  fi
  log "cannot write $1"; return 1
}

write_list() {  # write_list FILE ITEMS...: an empty list removes FILE
  if (($# == 1)); then rm -f -- "$1"; return 0; fi
  write_file "$@"
}

# ---------------------------------------------------------------- where certbot keeps things

uid_ok() { [[ $1 == 0 || $1 == "$EUID" ]]; }

trusted_process() {  # trusted_process PID: runs as root (or as the hook's user), really and effectively
  local line
  while IFS= read -r line; do
    if [[ $line =~ ^Uid:[[:space:]]+([0-9]+)[[:space:]]+([0-9]+) ]]; then
      uid_ok "${BASH_REMATCH[1]}" && uid_ok "${BASH_REMATCH[2]}"
      return
    fi
  done <"/proc/$1/status"
  return 1
}

# certbot's own command line (the hook's parent, or its grandparent when certbot ran the
# hook through a shell) is the surest source of a non-default --config-dir/--logs-dir.
# Only a process of root's counts: another user's "certbot" could name any folder.
CB_ARG_CONFIG="" CB_ARG_LOGS=""
read_certbot_cmdline() {
  local pid=$PPID i j stat cwd args=() a
  for ((i = 0; i < 4 && pid > 1; i++)); do
    [[ -r /proc/$pid/cmdline ]] || return 0
    trusted_process "$pid" 2>/dev/null || return 0
    mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null
    if [[ ${args[0]##*/} == certbot* || ${args[1]:-} == */certbot || ${args[1]:-} == certbot ]]; then
      cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null)
      for ((j = 0; j < ${#args[@]}; j++)); do
        a=${args[j]}
        case $a in
          --config-dir) CB_ARG_CONFIG=${args[j + 1]:-} ;;
          --config-dir=*) CB_ARG_CONFIG=${a#*=} ;;
          --logs-dir) CB_ARG_LOGS=${args[j + 1]:-} ;;
          --logs-dir=*) CB_ARG_LOGS=${a#*=} ;;
        esac
      done
      [[ -n $CB_ARG_CONFIG && $CB_ARG_CONFIG != /* ]] && CB_ARG_CONFIG=$cwd/$CB_ARG_CONFIG
      [[ -n $CB_ARG_LOGS && $CB_ARG_LOGS != /* ]] && CB_ARG_LOGS=$cwd/$CB_ARG_LOGS
      return 0
    fi
    stat=$(<"/proc/$pid/stat") || return 0
    stat=${stat##*) }          # past "pid (comm) ", comm may hold spaces
    read -r _ pid _ <<<"$stat"
    [[ $pid =~ ^[0-9]+$ ]] || return 0
  done
}

# certbot's files are read only from folders of root's: elsewhere anyone could plant them.
conf_value() {  # conf_value FILE KEY: a "key = value" line of a certbot renewal conf
  [[ -f $1 && -r $1 ]] || return 0
  read_capped "$1" | sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" | head -n 1
}

list_confs() {  # CONFS = certbot's renewal configurations (globbing only here)
  CONFS=()
  ((RENEWAL_OK)) || return 0
  set +f
  shopt -s nullglob
  CONFS=("$CONFIG"/renewal/*.conf)
  shopt -u nullglob
  set -f
}

find_dirs() {
  local conf="" c want
  SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" 2>/dev/null && pwd)
  read_certbot_cmdline
  CONFIG=${KEYCHEST_CERTBOT_DIR:-$CB_ARG_CONFIG}
  if [[ -z $CONFIG ]]; then
    case $SELF_DIR in
      */renewal-hooks/pre | */renewal-hooks/deploy | */renewal-hooks/post) CONFIG=${SELF_DIR%/renewal-hooks/*} ;;
    esac
  fi
  [[ -z $CONFIG && ${RENEWED_LINEAGE:-} == */live/* ]] && CONFIG=${RENEWED_LINEAGE%/live/*}
  CONFIG=${CONFIG:-/etc/letsencrypt}
  RENEWAL_OK=0
  if [[ -d $CONFIG/renewal ]]; then
    if safe_dir "$CONFIG/renewal"; then RENEWAL_OK=1
    else log "not reading $CONFIG/renewal: another user could write there"; fi
  fi

  # certbot writes logs_dir into every renewal conf; the renewed lineage's is the best guess
  [[ -n ${RENEWED_LINEAGE:-} && $RENEWAL_OK == 1 ]] && conf="$CONFIG/renewal/${RENEWED_LINEAGE##*/}.conf"
  if [[ ! -f $conf ]]; then
    conf=""
    list_confs
    for c in "${CONFS[@]}"; do [[ -f $c && ( -z $conf || $c -nt $conf ) ]] && conf=$c; done
  fi
  LOGS=${KEYCHEST_CERTBOT_LOGS:-${CB_ARG_LOGS:-$(conf_value "$conf" logs_dir)}}
  LOGS=${LOGS:-/var/log/letsencrypt}
  ACCOUNT_ID=$(conf_value "$conf" account)
  [[ $ACCOUNT_ID =~ ^[A-Za-z0-9_-]{1,64}$ ]] || ACCOUNT_ID=""
  LOGS_OK=0
  if [[ -d $LOGS ]]; then
    if safe_dir "$LOGS"; then LOGS_OK=1
    else log "not reading certbot's logs in $LOGS: another user could write there"; fi
  fi

  if [[ -n $KEYCHEST_STATE_FILE ]]; then
    STATE_FILE=$KEYCHEST_STATE_FILE
    parent_of "$STATE_FILE"; STATE_DIR=$PARENT
  else
    case $CLIENT:$SELF_DIR in
      # lego and dehydrated: in their own folder, as certbot's state is in certbot's
      lego:*) STATE_DIR=${LEGO_CERT_PATH%/certificates/*} ;;
      dehydrated:*) STATE_DIR=${BASEDIR:-$SELF_DIR} ;;
      *:*/renewal-hooks/*) STATE_DIR=${SELF_DIR%/*} ;;   # "beside the hooks"
      *) STATE_DIR=$CONFIG/renewal-hooks ;;
    esac
    STATE_FILE=$STATE_DIR/keychest_apikey
  fi
  SPOOL_FILE=$STATE_DIR/keychest_spool
  mkdir -p -- "$STATE_DIR" 2>/dev/null

  if [[ -n $KEYCHEST_LOG ]]; then want=$KEYCHEST_LOG
  elif ((LOGS_OK)); then want=$LOGS/keychest-hook.log
  else want=$STATE_DIR/keychest-hook.log
  fi
  if safe_file "$want"; then
    LOG_FILE=$want
    printf '%s' "$LOG_FILE" >"$WORK/log_file"
  else
    log "not logging to $want: not a regular file of root's in a folder only root can write (stderr only)"
  fi
}

# The current run is the tail of letsencrypt.log from its last "certbot version:" line:
# Debian's cli.ini (max-log-backups = 0) makes certbot append every run to one file.
extract_run() {
  RUN_LOG=$WORK/run.log
  : >"$RUN_LOG"
  local f=$LOGS/letsencrypt.log n
  ((LOGS_OK)) && [[ -f $f && -r $f ]] || return 0
  # the last 16 MiB hold any one run; a decade of appended runs is not read whole
  tail -c 16777216 -- "$f" >"$WORK/tail.log" 2>/dev/null
  n=$(tac -- "$WORK/tail.log" | grep -m 1 -n -F 'certbot version:' | cut -d: -f1)
  [[ $n =~ ^[0-9]+$ ]] && tail -n "$n" -- "$WORK/tail.log" >"$RUN_LOG"
  rm -f -- "$WORK/tail.log"
}

detect_client() {  # CLIENT = lego, dehydrated or certbot, from how the hook was called
  CLIENT=certbot
  if [[ ${1:-} == *_* ]]; then CLIENT=dehydrated   # its hook calls: deploy_cert, invalid_challenge, ...
  elif [[ -n ${LEGO_CERT_DOMAIN:-} && ${LEGO_CERT_PATH:-} == */certificates/* ]]; then CLIENT=lego
  fi
}

detect_mode() {
  case $CLIENT in
    lego) MODE=lego; return ;;
    dehydrated)
      case ${1:-} in
        deploy_cert | invalid_challenge) MODE=dehydrated ;;
        *) MODE=pre ;;   # challenges, CSR, start/exit, unchanged: nothing to report (and no output)
      esac
      return ;;
  esac
  case ${1:-} in
    pre | post | deploy | all | --pre | --post | --deploy | --all) MODE=${1#--}; return ;;
  esac
  case $SELF_DIR in
    */renewal-hooks/pre) MODE=pre; return ;;
    */renewal-hooks/post) MODE=post; return ;;
    */renewal-hooks/deploy) MODE=deploy; return ;;
  esac
  # A --post-hook/--deploy-hook given without argument: certbot logs "Running post-hook
  # command: ..." right before it runs one, which tells the phase even on 2.x, whose post
  # hooks inherit the last lineage's RENEWED_* variables.
  local last
  last=$(grep -oE 'Running (pre|deploy|post)-hook command' "$RUN_LOG" | tail -n 1)
  if [[ -n $last ]]; then
    last=${last#Running }; MODE=${last%%-*}
  elif [[ -n ${FAILED_DOMAINS+set} ]]; then MODE=post     # certbot 5 sets it for post hooks only
  elif [[ -n ${RENEWED_LINEAGE:-} ]]; then MODE=deploy
  else MODE=post                                        # by hand: report certbot's last run
  fi
}

# ---------------------------------------------------------------- which domains

add_domain() {  # add_domain NAME [SOURCE]: normalise, skip what cannot be monitored, de-duplicate
  local d=${1,,}
  d=${d%.}
  [[ -n $d ]] || return 0
  if [[ $d == \*.* ]]; then
    [[ -n ${SEEN[$d]:-} ]] || log "skip $d: a wildcard names no host to scan"
    SEEN[$d]=skip; return 0
  fi
  [[ $d =~ ^[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$ ]] || { log "skip '$1': not a domain name"; return 0; }
  [[ -n ${SEEN[$d]:-} ]] && return 0
  if ((${#DOMAINS[@]} >= MAX_DOMAINS)); then
    [[ -n ${SEEN[" full"]:-} ]] || log "more than $MAX_DOMAINS domains: the rest is left out of this run"
    SEEN[" full"]=1; return 0
  fi
  SEEN[$d]=${2:-1}
  DOMAINS+=("$d")
}

add_domain_list() {  # add_domain_list "A B C": split on blanks without globbing
  local -a names=()
  local d
  read -r -a names <<<"${1:-}"
  for d in "${names[@]}"; do add_domain "$d"; done
}

der_len() {  # der_len HEX: DER length at the start of HEX -> DER_LEN (bytes), DER_HDR (hex chars used)
  local b=$((16#${1:0:2})) n
  if ((b < 128)); then DER_LEN=$b; DER_HDR=2
  else n=$((b & 127)); DER_LEN=$((16#${1:2:n * 2})); DER_HDR=$((2 + n * 2)); fi
}

# The dNSNames of a certificate's subjectAltName, for "a.example and 2 more" when the log
# lacks the others. No openssl: base64 + od give the DER as hex, and the SAN extension is
# a short fixed walk: OID 2.5.29.17 (06 03 55 1d 11), [critical BOOLEAN], OCTET STRING
# wrapping a SEQUENCE of GeneralNames, of which [2] (tag 82) is a dNSName.
cert_dns_names() {
  local hex i end name esc j
  [[ -f $1 && -r $1 ]] || return 0
  hex=$(read_capped "$1" | sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/{/-END CERTIFICATE-/q;/-BEGIN/!p}' |
    base64 -d 2>/dev/null | od -An -v -tx1 | tr -d ' \n')
  [[ $hex =~ ^[0-9a-f]*$ && $hex == *0603551d11* ]] || return 0
  hex=${hex#*0603551d11}
  [[ $hex == 0101* ]] && hex=${hex:6}
  [[ $hex == 04* ]] || return 0
  der_len "${hex:2}"; hex=${hex:2+DER_HDR}
  [[ $hex == 30* ]] || return 0
  der_len "${hex:2}"; hex=${hex:2+DER_HDR}; end=$((DER_LEN * 2))
  for ((i = 0; i < end;)); do
    der_len "${hex:i+2}"
    if [[ ${hex:i:2} == 82 ]]; then
      name=${hex:i+2+DER_HDR:DER_LEN*2} esc=""
      for ((j = 0; j < ${#name}; j += 2)); do esc+="\\x${name:j:2}"; done
      printf '%b\n' "$esc"
    fi
    i=$((i + 2 + DER_HDR + DER_LEN * 2))
  done
}

add_cert_names() {  # add_cert_names LINEAGE-NAME
  local conf=$CONFIG/renewal/$1.conf cert d
  ((RENEWAL_OK)) || return 0
  cert=$(conf_value "$conf" cert)
  [[ -f $cert ]] || cert=$CONFIG/live/$1/cert.pem
  while IFS= read -r d; do add_domain "$d" cert; done < <(cert_dns_names "$cert")
}

cert_sha256() {  # cert_sha256 FILE: SHA-256 (hex) of the DER of FILE's first certificate, or nothing
  local body sum
  [[ -f $1 && -r $1 ]] || return 0
  body=$(read_capped "$1" | sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/{/-END CERTIFICATE-/q;/-BEGIN/!p}')
  [[ -n $body ]] || return 0
  printf '%s\n' "$body" | base64 -d >/dev/null 2>&1 || return 0
  sum=$(printf '%s\n' "$body" | base64 -d 2>/dev/null | sha256sum)
  sum=${sum%% *}
  [[ $sum =~ ^[0-9a-f]{64}$ ]] && printf '%s\n' "$sum"
}

lineage_cert() {  # lineage_cert LINEAGE-NAME: CERT = its cert.pem
  CERT=""
  ((RENEWAL_OK)) && CERT=$(conf_value "$CONFIG/renewal/$1.conf" cert)
  [[ -f $CERT ]] || CERT=$CONFIG/live/$1/cert.pem
}

note_renewals() {  # RENEWAL from certbot's RENEWED_DOMAINS (with each new leaf's SHA-256) and FAILED_DOMAINS
  local -a names=()
  local d conf sha
  local -A sums=()
  read -r -a names <<<"${FAILED_DOMAINS:-}"
  for d in "${names[@]}"; do d=${d,,}; RENEWAL[${d%.}]=failed; done
  read -r -a names <<<"${RENEWED_DOMAINS:-}"
  ((${#names[@]})) || return 0
  if [[ $MODE == deploy && -n ${RENEWED_LINEAGE:-} ]]; then
    lineage_cert "${RENEWED_LINEAGE##*/}"
    sha=$(cert_sha256 "$CERT")
    for d in "${names[@]}"; do d=${d,,}; sums[${d%.}]=$sha; done
  elif ((RENEWAL_OK)) && [[ -d $CONFIG/renewal ]]; then
    # A post hook gets the names of every renewed lineage: each name's certificate is the
    # lineage whose certificate lists it.
    list_confs
    for conf in "${CONFS[@]}"; do
      [[ -f $conf ]] || continue
      conf=${conf##*/}
      lineage_cert "${conf%.conf}"
      sha=$(cert_sha256 "$CERT")
      while IFS= read -r d; do sums[${d,,}]=$sha; done < <(cert_dns_names "$CERT")
    done
  fi
  for d in "${names[@]}"; do
    d=${d,,}; d=${d%.}
    [[ ${RENEWAL[$d]:-} == failed ]] && continue
    RENEWAL[$d]="renewed ${sums[$d]:-}"
  done
}

report_renewal() {  # report_renewal DOMAIN: `command renewal` when certbot renewed or failed it
  local what=${RENEWAL[$1]:-} status sha extra=""
  [[ -n $what ]] || return 0
  read -r status sha <<<"$what"
  [[ -n $sha ]] && extra=" sha256 $sha"
  [[ -n $HOST_NAME ]] && extra+=" host $HOST_NAME"
  if ! request "command renewal apikey $S_APIKEY domain $1 status $status$extra"; then
    log "renewal $1: no answer"; return 1
  fi
  log "renewal $1 ($status): $R_STATUS"   # an older server answers 404: nothing more to do
}

# One lineage of the run at a time: certbot 2.x and 5.x abbreviate 3+ names ("for a.example
# and 2 more domains" / "and 2 more"), so each lineage collects names from its summary line,
# its newOrder payload ("identifiers": [...]) and its challenge lines (missing for reused
# authorizations); if they still fall short of the announced count, its certificate decides.
L_NAME="" L_ACTIVE=0 L_EXPECT=0
declare -A L_SET=()
lin_add() { L_SET[${1,,}]=1; add_domain "$1"; }
flush_lineage() {
  if ((L_ACTIVE && ${#L_SET[@]} < L_EXPECT)); then
    if [[ -n $L_NAME ]]; then
      log "certbot log names ${#L_SET[@]} of $L_EXPECT domains of lineage $L_NAME; reading its certificate"
      add_cert_names "$L_NAME"
    else
      log "certbot log names ${#L_SET[@]} of $L_EXPECT domains and no lineage; some may be missing"
    fi
  fi
  L_NAME="" L_ACTIVE=0 L_EXPECT=0 L_SET=()
}

collect_from_log() {
  local line rest first and second more re_chal re_conf parts=()
  re_chal="challenge for (Identifier\(typ=IdentifierType\(dns\), value='([^']+)'\)|([^ ()']+))$"
  re_conf='(Processing|Writing new config) (.*)/renewal/([^/]+)\.conf'
  [[ -s $RUN_LOG ]] || { log "no certbot log of this run under $LOGS"; return 0; }
  while IFS= read -r line; do
    if [[ $line =~ $re_conf ]]; then
      # "Processing" opens a renewal lineage; "Writing new config" closes a new (certonly) one
      [[ ${BASH_REMATCH[1]} == Processing ]] && flush_lineage
      L_NAME=${BASH_REMATCH[3]}
    elif [[ $line == *"Requesting a certificate for "* || $line == *"Renewing an existing certificate for "* ]]; then
      rest=${line##* certificate for }
      read -r first and second more _ <<<"$rest"
      L_ACTIVE=1; L_EXPECT=1
      [[ -n $first ]] && lin_add "$first" && L_NAME=${L_NAME:-$first}   # a new lineage's default name
      if [[ $and == and && $more == more && $second =~ ^[0-9]{1,4}$ ]]; then L_EXPECT=$((10#$second + 1))
      elif [[ $and == and && -n $second ]]; then lin_add "$second"; L_EXPECT=2
      fi
    elif [[ $line =~ $re_chal ]]; then
      lin_add "${BASH_REMATCH[2]:-${BASH_REMATCH[3]}}"
    elif [[ $line == *'"identifiers": ['* ]]; then
      while IFS= read -r first; do
        first=${first%\"}
        lin_add "${first##*\"}"
      done < <(grep -oE '"type": "dns",(\\n| )*"value": "[^"]+"' <<<"$line")
    elif [[ $line == *":Arguments: ["* ]]; then
      # certonly/run: every -d of the command line (a -d value may list names with commas)
      while IFS= read -r first; do
        first=${first%\'}; first=${first##*[\' =]}
        IFS=, read -r -a parts <<<"$first"
        for first in "${parts[@]}"; do add_domain "$first"; done
      done < <(grep -oE "'(-d|--domains?)', '[^']+'|'--domains?=[^']+'" <<<"$line")
    fi
  done < <(grep -E ':Arguments: \[|Notifying user: Processing |Writing new config |certificate for |challenge for |"identifiers": \[' "$RUN_LOG")
  flush_lineage
}

collect_all_lineages() {  # "all": every certificate certbot manages
  local conf
  if [[ ! -d $CONFIG/renewal ]]; then
    log "no renewal folder $CONFIG/renewal: certbot manages no certificate there (KEYCHEST_CERTBOT_DIR names certbot's --config-dir)"
    return 0
  fi
  list_confs
  ((${#CONFS[@]})) || { log "no certificate in $CONFIG/renewal (no *.conf)"; return 0; }
  for conf in "${CONFS[@]}"; do
    [[ -f $conf ]] || continue
    conf=${conf##*/}; add_cert_names "${conf%.conf}"
  done
}

collect_domains() {
  case $MODE in
    deploy)
      add_domain_list "${RENEWED_DOMAINS:-}"
      if ((${#DOMAINS[@]} == 0)) && [[ -n ${RENEWED_LINEAGE:-} ]]; then add_cert_names "${RENEWED_LINEAGE##*/}"; fi
      ((${#DOMAINS[@]})) || collect_from_log
      ;;
    post)
      # certbot 5 hands a post hook every renewed (and failed) name; certbot 2 only the
      # last lineage's. The log of the run covers both, and first issuance too.
      add_domain_list "${RENEWED_DOMAINS:-}"
      add_domain_list "${FAILED_DOMAINS:-}"
      collect_from_log
      ;;
    all) collect_all_lineages ;;
    lego) collect_issued "${LEGO_CERT_DOMAIN:-}" "${LEGO_CERT_PATH:-}" ;;
    dehydrated)
      if [[ $DH_OP == deploy_cert ]]; then collect_issued "$DH_DOMAIN" "$DH_CERT"
      else add_domain "$DH_DOMAIN" && RENEWAL[${DH_DOMAIN,,}]=failed; fi
      ;;
  esac
}

collect_issued() {  # collect_issued DOMAIN CERT-FILE: lego's and dehydrated's newly issued certificate
  local d sha
  add_domain "$1"
  while IFS= read -r d; do add_domain "$d" cert; done < <(cert_dns_names "$2")
  sha=$(cert_sha256 "$2")
  for d in "${DOMAINS[@]}"; do RENEWAL[$d]="renewed $sha"; done
}

# ---------------------------------------------------------------- which email

valid_email() { ((${#1} <= 254)) && [[ $1 =~ ^[^[:space:]@\"\'\<\>,\;\\\`\$]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$ ]]; }

# Log files newest first: letsencrypt.log, then the rotated .1 .2 ... (certbot rotates on
# every run unless max-log-backups = 0); capped so that a huge history stays quick.
log_files_newest_first() {
  local f i=1
  ((LOGS_OK)) || return 0
  [[ -f $LOGS/letsencrypt.log && -r $LOGS/letsencrypt.log ]] && printf '%s\n' "$LOGS/letsencrypt.log"
  while ((i <= 300)); do
    f=$LOGS/letsencrypt.log.$i
    [[ -e $f ]] || break
    [[ -f $f && -r $f ]] && printf '%s\n' "$f"
    i=$((i + 1))
  done
}

find_email() {
  local f e files=()
  EMAIL="" EMAIL_SOURCE=""
  if [[ -n $KEYCHEST_EMAIL ]]; then EMAIL=$KEYCHEST_EMAIL EMAIL_SOURCE=setting; fi
  if [[ -z $EMAIL && $CLIENT == lego && -n ${LEGO_ACCOUNT_EMAIL:-} ]]; then
    EMAIL=$LEGO_ACCOUNT_EMAIL EMAIL_SOURCE="lego's account"
  fi
  # older certbot keeps the ACME account's contact in regr.json; prefer the lineage's account
  if [[ -z $EMAIL && -d $CONFIG/accounts ]] && safe_dir "$CONFIG/accounts"; then
    mapfile -t files < <(grep -rl -D skip --include=regr.json 'mailto:' "$CONFIG/accounts" 2>/dev/null | head -n 100)
    for f in "${files[@]}"; do
      [[ -n $ACCOUNT_ID && $f == */"$ACCOUNT_ID"/regr.json ]] && files=("$f") && break
    done
    if ((${#files[@]})); then
      e=$(read_capped "${files[0]}" | grep -oE 'mailto:[^"]+' | head -n 1)
      EMAIL=${e#mailto:} EMAIL_SOURCE="account (${files[0]#"$CONFIG"/})"
    fi
  fi
  # newer certbot keeps it only on the ACME server; the registering run logged it as
  # "mailto:..." (its newAccount request and response); else a -m/--email argument
  if [[ -z $EMAIL ]]; then
    mapfile -t files < <(log_files_newest_first)
    for f in "${files[@]}"; do
      e=$(grep -ohE "mailto:[^\"' ,)\\\\]+" "$f" 2>/dev/null | tail -n 1)
      [[ -n $e ]] && { EMAIL=${e#mailto:} EMAIL_SOURCE="certbot log ${f##*/}"; break; }
    done
  fi
  if [[ -z $EMAIL ]]; then
    for f in "${files[@]}"; do
      e=$(grep -oE "'(-m|--email)', '[^']+'|'--email=[^']+'" "$f" 2>/dev/null | tail -n 1)
      e=${e%\'}; e=${e##*[\' =]}; e=${e%%,*}
      [[ -n $e ]] && { EMAIL=$e EMAIL_SOURCE="certbot arguments in ${f##*/}"; break; }
    done
  fi
  f=$STATE_DIR/keychest_email
  if [[ -z $EMAIL && -e $f ]]; then
    if safe_file "$f"; then
      EMAIL=$(read_capped "$f" | grep -v '^[[:space:]]*#' | grep -m 1 -oE '[^[:space:]]+')
      EMAIL_SOURCE=${STATE_DIR##*/}/keychest_email
    else
      log "ignore $f: not a regular file of root's in a folder only root can write"
    fi
  fi
  if [[ -n $EMAIL ]] && ! valid_email "$EMAIL"; then
    log "ignore email '$EMAIL' from $EMAIL_SOURCE: not an address"; EMAIL="" EMAIL_SOURCE=""
  fi
  # nothing found now: keep what was claimed before (a placeholder is chosen on the network)
  if [[ -z $EMAIL && -n $S_EMAIL && $S_EMAIL != "$S_PLACEHOLDER" ]]; then
    EMAIL=$S_EMAIL EMAIL_SOURCE="claimed before"
  fi
}

# ---------------------------------------------------------------- state and spool

# keychest_apikey holds key=value lines, read without `source` (never run what a file says):
#   server=HOST:PORT  apikey=KEY  email=ADDRESS  claim=ok|<last refusal's code>  placeholder=ADDRESS
# A file holding only a bare key on its first line (written by hand) works too. Every value
# is checked against its shape: whatever else the file holds is dropped.
load_state() {
  local line
  S_SERVER="" S_APIKEY="" S_EMAIL="" S_CLAIM="" S_PLACEHOLDER=""
  [[ -e $STATE_FILE ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    case $line in
      '#'* | '') ;;
      server=*) S_SERVER=${line#*=} ;;
      apikey=*) S_APIKEY=${line#*=} ;;
      email=*) S_EMAIL=${line#*=} ;;
      claim=*) S_CLAIM=${line#*=} ;;
      placeholder=*) S_PLACEHOLDER=${line#*=} ;;
      *=*) ;;
      *) [[ -z $S_APIKEY ]] && S_APIKEY=$line S_SERVER=$SERVER_ID ;;
    esac
  done < <(read_capped "$STATE_FILE")
  if [[ -n $S_APIKEY && ! $S_APIKEY =~ $STORED_KEY_SHAPE ]]; then
    log "the key in $STATE_FILE is not of key shape: requesting a new key"; S_APIKEY="" S_CLAIM=""
  fi
  valid_email "$S_EMAIL" || S_EMAIL=""
  valid_email "$S_PLACEHOLDER" || S_PLACEHOLDER=""
  [[ $S_CLAIM == ok || $S_CLAIM =~ ^[0-9]{3}$ ]] || S_CLAIM=""
  # a key belongs to one server: another server means a new key and a new claim (another
  # port of the same host does not: that is the move from plain TCP to the TLS listener)
  if [[ -n $S_SERVER && ${S_SERVER%:*} != "$KEYCHEST_SERVER" ]]; then
    log "state was for server $S_SERVER, now $SERVER_ID: requesting a new key"
    S_APIKEY="" S_CLAIM=""
  fi
}

save_state() {
  write_file "$STATE_FILE" "# keychest certbot hook state; the API key is a secret: keep this file mode 600" \
    "server=$SERVER_ID" "apikey=$S_APIKEY" "email=$S_EMAIL" "claim=$S_CLAIM" "placeholder=$S_PLACEHOLDER"
}

# ---------------------------------------------------------------- the line API

# fd 3 reads the server, fd 4 writes to it: the same socket over TCP, openssl's pipes over TLS.
open_channel() {
  if ((KEYCHEST_TLS)); then tls_open; return; fi
  if ! { exec 3<>"/dev/tcp/$KEYCHEST_SERVER/$KEYCHEST_PORT"; } 2>/dev/null; then
    log "cannot connect to $SERVER_ID"; return 1
  fi
  exec 4>&3
  : >"$WORK/connected"
}

tls_open() {
  local target=$KEYCHEST_SERVER:$KEYCHEST_PORT pin name=() trust=() opts
  # -verify_return_error: openssl goes on after a failed verification without it
  opts=(-quiet -no_ign_eof -nocommands -verify_return_error)
  if [[ $KEYCHEST_SERVER == *:* ]]; then target="[$KEYCHEST_SERVER]:$KEYCHEST_PORT"; fi
  if [[ $KEYCHEST_SERVER =~ ^[0-9.]+$|: ]]; then name=(-verify_ip "$KEYCHEST_SERVER")
  else name=(-servername "$KEYCHEST_SERVER" -verify_hostname "$KEYCHEST_SERVER")
  fi
  # only the trust given here: not the system's CA folder or store as well
  trust=(-no-CApath)
  [[ $(openssl version 2>/dev/null) == "OpenSSL 1."* ]] || trust+=(-no-CAstore)
  if [[ -n $KEYCHEST_PIN ]]; then
    # openssl has no pin option: a first handshake fetches the certificate, whose key must
    # hash to the pin; the session then trusts exactly that certificate, and nothing else.
    openssl s_client -connect "$target" "${name[@]:0:2}" </dev/null 2>/dev/null |
      openssl x509 -out "$WORK/peer.pem" 2>/dev/null
    pin=$(openssl x509 -in "$WORK/peer.pem" -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null |
      openssl dgst -sha256 -binary 2>/dev/null | base64)
    if [[ -z $pin ]]; then log "TLS: no certificate from $SERVER_ID; nothing sent"; return 1; fi
    if [[ sha256//$pin != "$KEYCHEST_PIN" ]]; then
      log "TLS: the key of $SERVER_ID (sha256//$pin) is not KEYCHEST_PIN; nothing sent"; return 1
    fi
    [[ ${name[0]} == -servername ]] && name=("${name[@]:0:2}") || name=()
    trust+=(-CAfile "$WORK/peer.pem" -partial_chain -no_check_time)
  elif [[ -n $KEYCHEST_CA_FILE ]]; then
    trust+=(-CAfile "$KEYCHEST_CA_FILE")
  else
    trust=()   # the system's CAs
  fi
  coproc TLS { exec openssl s_client -connect "$target" "${name[@]}" "${trust[@]}" "${opts[@]}" 2>"$WORK/tls.err"; }
  exec 3<&"${TLS[0]}" 4>&"${TLS[1]}"
  TLS_CHILD=$TLS_PID
  # "connected" only once the server answers: the connect time-out covers the handshakes
}

close_channel() {
  exec 3<&- 4>&-
  [[ -n ${TLS_CHILD:-} ]] && kill -KILL "$TLS_CHILD" 2>/dev/null
  return 0
}

tls_note() {  # why openssl gave up, when it did
  local line
  [[ -s $WORK/tls.err ]] || return 0
  line=$(grep -m 1 -iE 'verify error|error|refused|connect:' "$WORK/tls.err")
  [[ -n $line ]] && log "TLS: $line"
}

# request LINE -> R_DATA, R_STATUS (cleaned), R_CODE; fails on a closed, silent or babbling
# connection. A keychest answer is one short data line and one status line: anything longer
# is not read into memory, and no more than a few lines are read per request.
request() {
  local line n=0 word
  R_DATA="" R_STATUS="" R_CODE=""
  printf '%s\n' "$1" >&4 2>/dev/null || return 1
  while IFS= read -r -n 1024 -t "$KEYCHEST_READ_TIMEOUT" -u 3 line; do
    if ((${#line} >= 1024 || ++n > 8)); then log "the server's answer is too long: not a keychest line API"; return 1; fi
    line=${line%$'\r'}
    case $line in
      'data '*) R_DATA=${line#data } ;;
      'status '*) R_STATUS=$line; break ;;
    esac
  done
  [[ -n $R_STATUS ]] || return 1
  : >"$WORK/answered"
  [[ -e $WORK/connected ]] || : >"$WORK/connected"
  read -r _ word R_CODE _ <<<"$R_STATUS"
  clean "$R_STATUS" 200; R_STATUS=$CLEAN
  if [[ ! ( $word == ok || $word == error ) || ! $R_CODE =~ ^[1-5][0-9][0-9]$ ]]; then
    log "malformed answer: $R_STATUS"; R_CODE=""; return 1
  fi
  return 0
}

new_key() {
  if ! request "command apikey"; then log "no answer to 'command apikey'"; return 1; fi
  if [[ $R_CODE != 200 || ! $R_DATA =~ $KEY_SHAPE ]]; then
    clean "$R_DATA" 60; log "apikey refused or not of key shape: $R_STATUS (data '$CLEAN')"; return 1
  fi
  S_APIKEY=$R_DATA S_CLAIM=""
  save_state
  log "got API key ${S_APIKEY:0:8}... (saved in $STATE_FILE)"
}

placeholder_email() {
  local domain="" rnd
  if request "command maildomain" && [[ $R_CODE == 200 && $R_DATA =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,200}[A-Za-z0-9])?$ ]]; then
    domain=$R_DATA
  else
    # an older server: the host part of the server's name (not an IP address)
    domain=$KEYCHEST_SERVER
    [[ $domain =~ [A-Za-z] && $domain == *.* && $domain != *:* ]] || domain=keychest.invalid
  fi
  rnd=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  S_PLACEHOLDER=certbot-$rnd@$domain
  valid_email "$S_PLACEHOLDER" || S_PLACEHOLDER=certbot-$rnd@keychest.invalid
  EMAIL=$S_PLACEHOLDER EMAIL_SOURCE="placeholder at the server's mail domain"
  save_state
}

claim() {  # fails with 1 when there is no usable answer, 2 when the server does not know the key
  if ! request "command claim apikey $S_APIKEY email $EMAIL"; then log "no answer to claim"; return 1; fi
  S_EMAIL=$EMAIL
  if [[ $R_CODE == 200 ]]; then
    S_CLAIM=ok
    log "claimed key ${S_APIKEY:0:8}... for $EMAIL ($EMAIL_SOURCE): $R_STATUS"
  else
    S_CLAIM=$R_CODE   # only the code: the server's text is no state
    log "claim for $EMAIL refused: $R_STATUS"
  fi
  save_state
  case $R_CODE in
    401) return 2 ;;
    400 | 413) log "the server did not understand the claim: stopping here"; return 1 ;;
  esac
  return 0
}

# Runs in a background subshell (the parent enforces connect and overall time-outs, since
# bash's /dev/tcp connect has none); it records each finished domain in $WORK/done.
net_session() {
  local d retried=0
  open_channel || return 1
  if [[ -z $S_APIKEY ]]; then new_key || return 1; fi
  [[ -n $EMAIL ]] || { [[ -n $S_PLACEHOLDER ]] && EMAIL=$S_PLACEHOLDER EMAIL_SOURCE="placeholder chosen before"; }
  [[ -n $EMAIL ]] || placeholder_email
  if [[ $EMAIL != "$S_EMAIL" || $S_CLAIM != ok ]]; then
    claim
    case $? in
      1) return 1 ;;
      2) retried=1; new_key && claim || return 1 ;;  # a new server or a reset: start over once
    esac
  fi
  for d in "${QUEUE[@]}"; do
    if ! request "command add apikey $S_APIKEY domain $d"; then log "add $d: no answer; kept for the next run"; return 1; fi
    if [[ $R_CODE == 401 && $retried == 0 ]]; then
      retried=1
      { new_key && claim; } || return 1
      request "command add apikey $S_APIKEY domain $d" || { log "add $d: no answer; kept for the next run"; return 1; }
    fi
    case $R_CODE in
      200) echo "$d" >>"$WORK/done"; log "added $d: $R_STATUS"; report_renewal "$d" || return 1 ;;
      422) echo "$d" >>"$WORK/done"; log "add $d rejected, dropped: $R_STATUS" ;;  # the name can never be monitored
      # 400/413: the request itself was refused, not the name; nothing is dropped for it
      400 | 413) log "add $d: $R_STATUS; the server did not understand the request: it and the rest kept for the next run"; return 1 ;;
      429 | 500 | 503) log "add $d: $R_STATUS; it and the rest kept for the next run"; return 1 ;;
      *) log "add $d: $R_STATUS; kept for the next run" ;;
    esac
  done
  return 0
}

net_run() {
  local rc
  trap '' PIPE   # a closed socket must fail the write, not kill the session silently
  net_session; rc=$?
  ((rc == 0)) || tls_note
  close_channel
  return "$rc"
}

# ---------------------------------------------------------------- main

main() {
  local t0 pid d budget_ms connect_ms sent=0 server=unreachable
  declare -a QUEUE=() LEFT=()
  declare -A DELIVERED=()
  now_ms; t0=$NOW_MS
  trap 'log "interrupted"; exit 0' INT TERM HUP

  detect_client "${1:-}"
  DH_OP=${1:-} DH_DOMAIN=${2:-} DH_CERT=${4:-}   # dehydrated: OP DOMAIN KEY CERT FULLCHAIN CHAIN ...
  find_dirs
  extract_run
  detect_mode "${1:-}"
  [[ $MODE == pre && $CLIENT == dehydrated ]] && return 0   # dehydrated calls for every step
  if [[ $MODE == pre ]]; then log "nothing to do before certbot's work"; return 0; fi
  collect_domains
  note_renewals
  HOST_NAME=$(uname -n 2>/dev/null)
  [[ $HOST_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$ ]] || HOST_NAME=""
  log "${#DOMAINS[@]} domain(s) to report: ${DOMAINS[*]:-none}"

  # The API key and the spool are only kept where nobody else can read, change or swap them.
  if ! safe_file "$STATE_FILE" || ! safe_file "$SPOOL_FILE"; then
    log "$STATE_FILE or $SPOOL_FILE is not a regular file of root's in a folder only root can write: nothing sent, nothing kept"
    return 0
  fi
  load_state
  find_email
  [[ -n $EMAIL ]] && log "email $EMAIL (from $EMAIL_SOURCE)"

  # the spool first: if the hook dies on the way, nothing is lost, only re-sent next time
  if [[ -e $SPOOL_FILE ]]; then
    while IFS= read -r d || [[ -n $d ]]; do add_domain "$d" spool; done < <(read_capped "$SPOOL_FILE")
  fi
  QUEUE=("${DOMAINS[@]}")
  write_list "$SPOOL_FILE" "${QUEUE[@]}"

  if ((${#QUEUE[@]} == 0)) && [[ -n $S_APIKEY && $S_CLAIM == ok && ( -z $EMAIL || $EMAIL == "$S_EMAIL" ) ]]; then
    log "nothing to send"; return 0
  fi
  if ((!NET_OK)); then
    log "spooled ${#QUEUE[@]} domain(s) in $SPOOL_FILE: the settings above need fixing"; return 0
  fi

  budget_ms=$((KEYCHEST_TIME_BUDGET * 1000)) connect_ms=$((KEYCHEST_CONNECT_TIMEOUT * 1000))
  net_run &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    now_ms
    if [[ ! -e $WORK/connected ]] && ((NOW_MS - t0 > connect_ms)); then
      log "connect to $SERVER_ID timed out after ${KEYCHEST_CONNECT_TIMEOUT}s"
      kill -KILL "$pid" 2>/dev/null; break
    fi
    if ((NOW_MS - t0 > budget_ms)); then
      log "out of time after ${KEYCHEST_TIME_BUDGET}s"
      kill -KILL "$pid" 2>/dev/null; break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null
  [[ -e $WORK/connected ]] && server="connected but silent"
  [[ -e $WORK/answered ]] && server=answering

  if [[ -f $WORK/done ]]; then
    while IFS= read -r d; do DELIVERED[$d]=1; sent=$((sent + 1)); done <"$WORK/done"
  fi
  for d in "${QUEUE[@]}"; do [[ -n ${DELIVERED[$d]:-} ]] || LEFT+=("$d"); done
  write_list "$SPOOL_FILE" "${LEFT[@]}"
  now_ms
  if ((${#LEFT[@]})); then
    log "spooled ${#LEFT[@]} domain(s) for the next run in $SPOOL_FILE: ${LEFT[*]}"
  fi
  log "done in $((NOW_MS - t0)) ms: ${sent} sent, ${#LEFT[@]} spooled, server $SERVER_ID $server"
}

# The whole run is bounded, whatever blocks it (a FIFO, a hung tool, a parent that makes
# the hook ignore SIGTERM): main runs in a process group of its own, which this shell ends
# with TERM and then KILL when time is up, stray children (openssl) included.
run_bounded() {
  local runner limit_ms t0 grace
  now_ms; t0=$NOW_MS
  limit_ms=$(((KEYCHEST_TIME_BUDGET + 3) * 1000))
  set -m
  (set +m; main "$@") </dev/null &
  runner=$!
  disown
  set +m
  trap 'kill -KILL -- "-$runner" 2>/dev/null; rm -rf -- "$WORK"; exit 0' INT TERM HUP
  while kill -0 "$runner" 2>/dev/null; do
    now_ms
    if ((NOW_MS - t0 > limit_ms)); then
      [[ -f $WORK/log_file ]] && LOG_FILE=$(<"$WORK/log_file")
      log "still running after $((limit_ms / 1000))s: stopped"
      kill -TERM -- "-$runner" 2>/dev/null
      for ((grace = 0; grace < 10; grace++)); do
        kill -0 "$runner" 2>/dev/null || break
        sleep 0.1
      done
      break
    fi
    sleep 0.05
  done
  kill -KILL -- "-$runner" 2>/dev/null
  rm -rf -- "$WORK"
}

check_settings
if WORK=$(mktemp -d "${TMPDIR:-/tmp}/keychest-hook.XXXXXX" 2>/dev/null); then
  run_bounded "$@"
fi
exit 0   # whatever happened, certbot sees success
