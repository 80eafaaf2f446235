# The maintenance CronJob's restart of the registry's Deployment: what `kubectl rollout restart`
# sends (k8s.io/kubectl pkg/cmd/rollout/rollout_restart.go, RunRestart: a strategic-merge PATCH
# that sets the pod template's kubectl.kubernetes.io/restartedAt, field manager kubectl-rollout),
# sent by curl with the pod's ServiceAccount token, as client-go's in-cluster config finds the
# API server (KUBERNETES_SERVICE_HOST and _PORT, the account's ca.crt and namespace).
# Run by /bin/sh -c with the Deployment's name as $1; POSIX sh (the curl image's busybox).
set -eu
deployment=$1
account=/var/run/secrets/kubernetes.io/serviceaccount
namespace=$(cat "$account/namespace")
host=$KUBERNETES_SERVICE_HOST
case $host in
  *:*) host="[$host]" ;;
esac
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
patch="{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"kubectl.kubernetes.io/restartedAt\":\"$now\"}}}}}"
url="https://$host:$KUBERNETES_SERVICE_PORT/apis/apps/v1/namespaces/$namespace/deployments/$deployment?fieldManager=kubectl-rollout"
# The token goes to curl on its standard input (printf is the shell's own): never in a
# process's arguments.
if ! printf 'Authorization: Bearer %s\n' "$(cat "$account/token")" |
  curl --silent --show-error --fail-with-body --cacert "$account/ca.crt" --header @- \
    --request PATCH --header 'Content-Type: application/strategic-merge-patch+json' --data "$patch" \
    --output /tmp/response "$url"; then
  cat /tmp/response >&2 || true
  echo "restart of deployment $deployment in $namespace failed" >&2
  exit 1
fi
echo "deployment.apps/$deployment restarted"
