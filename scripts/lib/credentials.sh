# Throwaway credentials for a local fleet, bench or drill run (sourced, not run).
#
#   mint_credentials "$worker_bin" "$run_dir"
#
# Mints a tenant key (tenant "default") and an operator key with `callworker keys new`,
# writes their hashes to "$run_dir/keys.toml" (mode 600), draws a random Twilio auth token,
# and exports what the processes started afterwards read:
#   workers:  CALLWORKER_AUTH__KEYS_FILE, CALLWORKER_TWILIO__AUTH_TOKEN, and a per-key request
#             rate (CALLWORKER_AUTH__REQUESTS_PER_SECOND/_BURST) high enough for one load
#             generator key: it places hundreds of calls in a burst and fetches every call's
#             recording, far past the default 50/s meant for one tenant's application
#   loadgen:  CALLWORKER_API_KEY, CALLWORKER_OPERATOR_KEY, CALLWORKER_TWILIO_AUTH_TOKEN
# and sets api_key, operator_key and keys_file for the script itself (curl calls).
# The keys exist only in this run's directory and environment.

mint_credentials() {
  local bin=$1 dir=$2 tenant_out operator_out
  tenant_out=$("$bin" keys new --tenant default --id local-tenant) || return 1
  operator_out=$("$bin" keys new --operator --id local-operator) || return 1
  # `keys new` prints the key on its second line and the config entry on its fifth.
  api_key=$(sed -n 2p <<<"$tenant_out")
  operator_key=$(sed -n 2p <<<"$operator_out")
  keys_file=$dir/keys.toml
  (
    umask 077
    printf 'keys = [\n  %s,\n  %s,\n]\n' "$(sed -n 5p <<<"$tenant_out")" "$(sed -n 5p <<<"$operator_out")" >"$keys_file"
  )
  local token
  token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  export CALLWORKER_AUTH__KEYS_FILE=$keys_file
  export CALLWORKER_TWILIO__AUTH_TOKEN=$token
  export CALLWORKER_AUTH__REQUESTS_PER_SECOND=${CALLWORKER_AUTH__REQUESTS_PER_SECOND:-5000}
  export CALLWORKER_AUTH__REQUESTS_BURST=${CALLWORKER_AUTH__REQUESTS_BURST:-5000}
  export CALLWORKER_API_KEY=$api_key
  export CALLWORKER_OPERATOR_KEY=$operator_key
  export CALLWORKER_TWILIO_AUTH_TOKEN=$token
}
