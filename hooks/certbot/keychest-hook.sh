#!/usr/bin/env bash
# keychest-hook.sh - certbot hook: put the domains certbot issued or renewed under
# keychest certificate monitoring. Needs only bash, coreutils, grep and sed; it
# talks to the keychest line API (TCP, default port 10023) through /dev/tcp.
#
# Use it as any of (certbot 2.x and 5.x):
#   /etc/letsencrypt/renewal-hooks/post/keychest-hook.sh     (post: every lineage of the run)
#   /etc/letsencrypt/renewal-hooks/deploy/keychest-hook.sh   (deploy: once per renewed lineage)
#   certbot ... --post-hook "/path/keychest-hook.sh post"    (or --deploy-hook ".../keychest-hook.sh deploy")
#   keychest-hook.sh all      register every certificate certbot manages (e.g. once, after installing)
#
# What it does: finds the domains (RENEWED_DOMAINS of a deploy hook; for a post hook
# certbot's log of the current run, completed from the lineage's certificate), finds an
# email (setting, Let's Encrypt account, renewal-hooks/keychest_email, else a placeholder
# at the server's mail domain), then: `command apikey` once, `command claim`, and
# `command add` per domain. State (API key, claim) lives in renewal-hooks/keychest_apikey
# (mode 600); undelivered domains wait in renewal-hooks/keychest_spool for the next run.
# It never fails certbot: it always exits 0 and gives up on the network within ~10 s.

# ---- settings: `keychest hook install` fills in the first three; KEYCHEST_* variables override all
KEYCHEST_SERVER=${KEYCHEST_SERVER:-keychest.example.net}
KEYCHEST_PORT=${KEYCHEST_PORT:-10023}
KEYCHEST_EMAIL=${KEYCHEST_EMAIL:-}
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
MODE=start
LOG_FILE=""
WORK=""
declare -a DOMAINS=()
declare -A SEEN=()

log() {
  local line
  printf -v line '%(%Y-%m-%dT%H:%M:%S%z)T keychest-hook[%s] %s: %s' -1 "$$" "$MODE" "$*"
  [[ $KEYCHEST_QUIET == 1 ]] || printf '%s\n' "$line" >&2
  [[ -n $LOG_FILE ]] && printf '%s\n' "$line" >>"$LOG_FILE" 2>/dev/null
  return 0
}

now_ms() {  # NOW_MS = wall clock in ms, without forking (bash 5 EPOCHREALTIME; locale may use a comma)
  local t=${EPOCHREALTIME/[.,]/}
  NOW_MS=$(( ${t:-$((SECONDS * 1000000))} / 1000 ))
}

# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
  [[ -n $WORK && -d $WORK ]] && rm -rf -- "$WORK"
  exit 0   # whatever happened, certbot sees success
}

# ---------------------------------------------------------------- where certbot keeps things

# certbot's own command line (the hook's parent, or its grandparent when certbot ran the
# hook through a shell) is the surest source of a non-default --config-dir/--logs-dir.
CB_ARG_CONFIG="" CB_ARG_LOGS=""
read_certbot_cmdline() {
  local pid=$PPID i j stat cwd args=() a
  for ((i = 0; i < 4 && pid > 1; i++)); do
    [[ -r /proc/$pid/cmdline ]] || return 0
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
  done
}

conf_value() {  # conf_value FILE KEY: a "key = value" line of a certbot renewal conf
  [[ -r $1 ]] || return 0
  sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" "$1" | head -n 1
}

find_dirs() {
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

  # certbot writes logs_dir into every renewal conf; the renewed lineage's is the best guess
  local conf=""
  [[ -n ${RENEWED_LINEAGE:-} ]] && conf="$CONFIG/renewal/${RENEWED_LINEAGE##*/}.conf"
  if [[ ! -r $conf ]]; then
    local c
    for c in "$CONFIG"/renewal/*.conf; do [[ -r $c && ( ! -r $conf || $c -nt $conf ) ]] && conf=$c; done
  fi
  LOGS=${KEYCHEST_CERTBOT_LOGS:-${CB_ARG_LOGS:-$(conf_value "$conf" logs_dir)}}
  LOGS=${LOGS:-/var/log/letsencrypt}
  ACCOUNT_ID=$(conf_value "$conf" account)

  if [[ -n $KEYCHEST_STATE_FILE ]]; then
    STATE_FILE=$KEYCHEST_STATE_FILE
    STATE_DIR=$(dirname -- "$STATE_FILE")
  else
    case $SELF_DIR in
      */renewal-hooks/*) STATE_DIR=${SELF_DIR%/*} ;;   # "beside the hooks"
      *) STATE_DIR=$CONFIG/renewal-hooks ;;
    esac
    STATE_FILE=$STATE_DIR/keychest_apikey
  fi
  SPOOL_FILE=$STATE_DIR/keychest_spool
  mkdir -p -- "$STATE_DIR" 2>/dev/null

  if [[ -n $KEYCHEST_LOG ]]; then LOG_FILE=$KEYCHEST_LOG
  elif [[ -d $LOGS && -w $LOGS ]]; then LOG_FILE=$LOGS/keychest-hook.log
  else LOG_FILE=$STATE_DIR/keychest-hook.log
  fi
}

# The current run is the tail of letsencrypt.log from its last "certbot version:" line:
# Debian's cli.ini (max-log-backups = 0) makes certbot append every run to one file.
extract_run() {
  RUN_LOG=$WORK/run.log
  : >"$RUN_LOG"
  local f=$LOGS/letsencrypt.log n
  [[ -r $f ]] || return 0
  n=$(tac -- "$f" | grep -m 1 -n -F 'certbot version:' | cut -d: -f1)
  [[ -n $n ]] && tail -n "$n" -- "$f" >"$RUN_LOG"
}

detect_mode() {
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
  [[ $d =~ ^[a-z0-9_]([a-z0-9_.-]*[a-z0-9])?(:[0-9]{1,5})?$ ]] || { log "skip '$1': not a domain name"; return 0; }
  [[ -n ${SEEN[$d]:-} ]] && return 0
  SEEN[$d]=${2:-1}
  DOMAINS+=("$d")
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
  [[ -r $1 ]] || return 0
  hex=$(sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/{/-END CERTIFICATE-/q;/-BEGIN/!p}' "$1" |
    base64 -d 2>/dev/null | od -An -v -tx1 | tr -d ' \n')
  [[ $hex == *0603551d11* ]] || return 0
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
  cert=$(conf_value "$conf" cert)
  [[ -r $cert ]] || cert=$CONFIG/live/$1/cert.pem
  while IFS= read -r d; do add_domain "$d" cert; done < <(cert_dns_names "$cert")
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
      if [[ $and == and && $more == more && $second =~ ^[0-9]+$ ]]; then L_EXPECT=$((second + 1))
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
  for conf in "$CONFIG"/renewal/*.conf; do
    [[ -r $conf ]] || continue
    conf=${conf##*/}; add_cert_names "${conf%.conf}"
  done
}

collect_domains() {
  local d
  case $MODE in
    deploy)
      for d in ${RENEWED_DOMAINS:-}; do add_domain "$d"; done
      if ((${#DOMAINS[@]} == 0)) && [[ -n ${RENEWED_LINEAGE:-} ]]; then add_cert_names "${RENEWED_LINEAGE##*/}"; fi
      ((${#DOMAINS[@]})) || collect_from_log
      ;;
    post)
      # certbot 5 hands a post hook every renewed (and failed) name; certbot 2 only the
      # last lineage's. The log of the run covers both, and first issuance too.
      for d in ${RENEWED_DOMAINS:-} ${FAILED_DOMAINS:-}; do add_domain "$d"; done
      collect_from_log
      ;;
    all) collect_all_lineages ;;
  esac
}

# ---------------------------------------------------------------- which email

valid_email() { [[ $1 =~ ^[^[:space:]@\"\'\<\>,\;]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$ ]]; }

# Log files newest first: letsencrypt.log, then the rotated .1 .2 ... (certbot rotates on
# every run unless max-log-backups = 0); capped so that a huge history stays quick.
log_files_newest_first() {
  local f i=1
  [[ -r $LOGS/letsencrypt.log ]] && printf '%s\n' "$LOGS/letsencrypt.log"
  while ((i <= 300)); do
    f=$LOGS/letsencrypt.log.$i
    [[ -e $f ]] || break
    [[ -r $f ]] && printf '%s\n' "$f"
    i=$((i + 1))
  done
}

find_email() {
  local f e files=()
  EMAIL="" EMAIL_SOURCE=""
  if [[ -n $KEYCHEST_EMAIL ]]; then EMAIL=$KEYCHEST_EMAIL EMAIL_SOURCE=setting; fi
  # older certbot keeps the ACME account's contact in regr.json; prefer the lineage's account
  if [[ -z $EMAIL && -d $CONFIG/accounts ]]; then
    mapfile -t files < <(grep -rl --include=regr.json 'mailto:' "$CONFIG/accounts" 2>/dev/null)
    for f in "${files[@]}"; do
      [[ -n $ACCOUNT_ID && $f == */"$ACCOUNT_ID"/regr.json ]] && files=("$f") && break
    done
    if ((${#files[@]})); then
      e=$(grep -oE 'mailto:[^"]+' "${files[0]}" | head -n 1)
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
  if [[ -z $EMAIL && -r $STATE_DIR/keychest_email ]]; then
    EMAIL=$(grep -v '^[[:space:]]*#' "$STATE_DIR/keychest_email" | grep -m 1 -oE '[^[:space:]]+')
    EMAIL_SOURCE=${STATE_DIR##*/}/keychest_email
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
#   server=HOST:PORT  apikey=KEY  email=ADDRESS  claim=ok|<last error status>  placeholder=ADDRESS
# A file holding only a bare key on its first line (written by hand) works too.
load_state() {
  local line
  S_SERVER="" S_APIKEY="" S_EMAIL="" S_CLAIM="" S_PLACEHOLDER=""
  [[ -r $STATE_FILE ]] || return 0
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
  done <"$STATE_FILE"
  [[ $S_APIKEY =~ ^[A-Za-z0-9._:-]+$ ]] || S_APIKEY=""
  # a key belongs to one server: another server means a new key and a new claim
  if [[ -n $S_SERVER && $S_SERVER != "$SERVER_ID" ]]; then
    log "state was for server $S_SERVER, now $SERVER_ID: requesting a new key"
    S_APIKEY="" S_CLAIM=""
  fi
}

save_state() {
  local tmp=$STATE_FILE.tmp.$BASHPID
  if (umask 077 && printf '%s\n' "# keychest certbot hook state; the API key is a secret: keep this file mode 600" \
    "server=$SERVER_ID" "apikey=$S_APIKEY" "email=$S_EMAIL" "claim=$S_CLAIM" "placeholder=$S_PLACEHOLDER" \
    >"$tmp") 2>/dev/null && chmod 600 "$tmp" && mv -f -- "$tmp" "$STATE_FILE"; then
    return 0
  fi
  rm -f -- "$tmp"; log "cannot write $STATE_FILE"; return 1
}

write_list() {  # write_list FILE ITEMS...: atomically; an empty list removes FILE
  local file=$1 tmp=$1.tmp.$BASHPID
  shift
  if (($# == 0)); then rm -f -- "$file"; return 0; fi
  (umask 077 && printf '%s\n' "$@" >"$tmp") 2>/dev/null && mv -f -- "$tmp" "$file" && return 0
  rm -f -- "$tmp"; log "cannot write $file"; return 1
}

# ---------------------------------------------------------------- the line API

request() {  # request LINE -> R_DATA, R_STATUS, R_CODE; fails on a closed or silent connection
  local line
  R_DATA="" R_STATUS="" R_CODE=""
  printf '%s\n' "$1" >&3 2>/dev/null || return 1
  while IFS= read -r -t "$KEYCHEST_READ_TIMEOUT" -u 3 line; do
    line=${line%$'\r'}
    case $line in
      data\ *) R_DATA=${line#data } ;;
      status\ *) R_STATUS=$line; break ;;
    esac
  done
  [[ -n $R_STATUS ]] || return 1
  : >"$WORK/answered"
  read -r _ _ R_CODE _ <<<"$R_STATUS"
  return 0
}

new_key() {
  if ! request "command apikey"; then log "no answer to 'command apikey'"; return 1; fi
  if [[ $R_CODE != 200 || ! $R_DATA =~ ^[A-Za-z0-9._:-]+$ ]]; then log "apikey refused: $R_STATUS"; return 1; fi
  S_APIKEY=$R_DATA S_CLAIM=""
  save_state
  log "got API key ${S_APIKEY:0:8}... (saved in $STATE_FILE)"
}

placeholder_email() {
  local domain="" rnd
  if request "command maildomain" && [[ $R_CODE == 200 && $R_DATA =~ ^[A-Za-z0-9.-]+$ ]]; then
    domain=$R_DATA
  else
    # an older server: the host part of the server's name (not an IP address)
    domain=$KEYCHEST_SERVER
    [[ $domain =~ [A-Za-z] && $domain == *.* && $domain != *:* ]] || domain=keychest.invalid
  fi
  rnd=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  S_PLACEHOLDER=certbot-$rnd@$domain
  EMAIL=$S_PLACEHOLDER EMAIL_SOURCE="placeholder at the server's mail domain"
  save_state
}

claim() {  # fails with 1 when the server did not answer, 2 when it does not know the key
  if ! request "command claim apikey $S_APIKEY email $EMAIL"; then log "no answer to claim"; return 1; fi
  if [[ $R_CODE == 200 ]]; then
    S_EMAIL=$EMAIL S_CLAIM=ok
    log "claimed key ${S_APIKEY:0:8}... for $EMAIL ($EMAIL_SOURCE): $R_STATUS"
  else
    S_EMAIL=$EMAIL S_CLAIM=${R_STATUS// /_}
    log "claim for $EMAIL refused: $R_STATUS"
  fi
  save_state
  [[ $R_CODE != 401 ]] || return 2
}

# Runs in a background subshell (the parent enforces connect and overall time-outs, since
# bash's /dev/tcp connect has none); it records each finished domain in $WORK/done.
net_session() {
  local d retried=0
  trap '' PIPE   # a closed socket must fail the write, not kill the session silently
  if ! { exec 3<>"/dev/tcp/$KEYCHEST_SERVER/$KEYCHEST_PORT"; } 2>/dev/null; then
    log "cannot connect to $SERVER_ID"; return 1
  fi
  : >"$WORK/connected"
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
      200) echo "$d" >>"$WORK/done"; log "added $d: $R_STATUS" ;;
      400 | 413 | 422) echo "$d" >>"$WORK/done"; log "add $d rejected, dropped: $R_STATUS" ;;  # never valid
      429 | 500 | 503) log "add $d: $R_STATUS; it and the rest kept for the next run"; return 1 ;;
      *) log "add $d: $R_STATUS; kept for the next run" ;;
    esac
  done
  exec 3>&-
  return 0
}

# ---------------------------------------------------------------- main

main() {
  local t0 pid d budget_ms connect_ms sent=0 server=unreachable
  declare -a QUEUE=() LEFT=()
  declare -A DELIVERED=()
  now_ms; t0=$NOW_MS
  trap finish EXIT
  trap 'log "interrupted"; exit 0' INT TERM HUP
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/keychest-hook.XXXXXX") || { WORK=""; return 0; }
  SERVER_ID=$KEYCHEST_SERVER:$KEYCHEST_PORT

  find_dirs
  extract_run
  detect_mode "${1:-}"
  if [[ $MODE == pre ]]; then log "nothing to do before certbot's work"; return 0; fi
  collect_domains
  log "${#DOMAINS[@]} domain(s) to report: ${DOMAINS[*]:-none}"

  load_state
  find_email
  [[ -n $EMAIL ]] && log "email $EMAIL (from $EMAIL_SOURCE)"

  # the spool first: if the hook dies on the way, nothing is lost, only re-sent next time
  if [[ -r $SPOOL_FILE ]]; then
    while IFS= read -r d || [[ -n $d ]]; do add_domain "$d" spool; done <"$SPOOL_FILE"
  fi
  QUEUE=("${DOMAINS[@]}")
  write_list "$SPOOL_FILE" "${QUEUE[@]}"

  if ((${#QUEUE[@]} == 0)) && [[ -n $S_APIKEY && $S_CLAIM == ok && ( -z $EMAIL || $EMAIL == "$S_EMAIL" ) ]]; then
    log "nothing to send"; return 0
  fi

  budget_ms=$((KEYCHEST_TIME_BUDGET * 1000)) connect_ms=$((KEYCHEST_CONNECT_TIMEOUT * 1000))
  net_session &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    now_ms
    if [[ ! -e $WORK/connected ]] && ((NOW_MS - t0 > connect_ms)); then
      log "connect to $SERVER_ID timed out after ${KEYCHEST_CONNECT_TIMEOUT}s"
      kill "$pid" 2>/dev/null; break
    fi
    if ((NOW_MS - t0 > budget_ms)); then
      log "out of time after ${KEYCHEST_TIME_BUDGET}s"
      kill "$pid" 2>/dev/null; break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null
  [[ -e $WORK/connected ]] && server="connected but silent"
  [[ -e $WORK/answered ]] && server=answering

  if [[ -r $WORK/done ]]; then
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

main "$@"
exit 0
