# Free loopback ports for the scripts in scripts/ (sourced, not run).
#
#   free_port redis_port || die "found no free loopback port"
#
# free_port sets the variable named by its argument rather than printing the port: called
# as $(free_port) it would run in a subshell and lose the record of ports already handed
# out, so two components of one run could get the same port.

_free_ports_taken=" "

free_port() {
  local _fp_var=$1 _fp_port
  for _ in $(seq 1 200); do
    if command -v python3 >/dev/null 2>&1; then
      _fp_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    else
      _fp_port=$((20000 + RANDOM % 40000))
      if (exec 3<>"/dev/tcp/127.0.0.1/$_fp_port") 2>/dev/null; then continue; fi
    fi
    # Never hand out the same port twice in one run.
    case "$_free_ports_taken" in *" $_fp_port "*) continue ;; esac
    _free_ports_taken="$_free_ports_taken$_fp_port "
    printf -v "$_fp_var" '%s' "$_fp_port"
    return 0
  done
  return 1
}
