#!/usr/bin/env bash
# The migration lab (hack/migration-lab.sh) on a real cluster: kind, Multus,
# KubeVirt, portgroup. For a workstation with Docker, kind, kubectl, virtctl and
# internet access: it pulls images, so it cannot run on our build machines, and
# CI runs hack/migration-lab.sh (the same steps in namespaces) instead.
#
#   hack/kind-e2e.sh          create the cluster, run the scenario, keep the cluster
#   hack/kind-e2e.sh --down   delete the cluster and the trunk network
#
# Step for step with the lab: a trunk "switch" (a Docker bridge network, which
# passes 802.1Q tags), a legacy host per VLAN outside the cluster, portgroupd on
# each worker with eth1 as uplink, the migrated VM on prod-web (VLAN 100) keeping
# its MAC and IP, a live migration to the other worker with the outage measured,
# and a db VM on VLAN 200 that never reaches VLAN 100.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=portgroup
MULTUS=https://raw.githubusercontent.com/k8snetworkplumbingwg/multus-cni/v4.1.4/deployments/multus-daemonset-thick.yml
KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.4.0}
IMAGE=ghcr.io/portgroup/portgroup:0.1.0

if [[ "${1:-}" == --down ]]; then
    kind delete cluster --name "$CLUSTER"
    docker rm -f pg-legacy100 pg-legacy200 2>/dev/null || true
    docker network rm pg-trunk 2>/dev/null || true
    exit 0
fi
for tool in docker kind kubectl virtctl; do
    command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done

echo "== cluster, and the trunk every worker gets as eth1"
kind create cluster --config hack/kind-config.yaml
docker network create --driver bridge --internal pg-trunk
workers=$(kind get nodes --name "$CLUSTER" | grep worker)
for node in $workers; do docker network connect pg-trunk "$node"; done

echo "== legacy hosts outside the cluster, one per VLAN"
docker run -d --name pg-legacy100 --network pg-trunk --cap-add NET_ADMIN busybox:1.36 sh -c \
    'ip link add link eth0 name eth0.100 type vlan id 100 && ip addr add 10.10.100.1/24 dev eth0.100 && ip link set eth0.100 up && sleep 1d'
docker run -d --name pg-legacy200 --network pg-trunk --cap-add NET_ADMIN busybox:1.36 sh -c \
    'ip link add link eth0 name eth0.200 type vlan id 200 && ip addr add 10.10.100.200/24 dev eth0.200 && ip link set eth0.200 up && sleep 1d'

echo "== Multus, KubeVirt (emulation: kind has no nested KVM), portgroup"
kubectl apply -f "$MULTUS"
kubectl apply -f "https://github.com/kubevirt/kubevirt/releases/download/$KUBEVIRT_VERSION/kubevirt-operator.yaml"
kubectl apply -f "https://github.com/kubevirt/kubevirt/releases/download/$KUBEVIRT_VERSION/kubevirt-cr.yaml"
kubectl -n kubevirt patch kubevirt kubevirt --type merge -p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true}}}}'
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
kubectl apply -k manifests/
kubectl -n portgroup-system rollout status ds/portgroupd --timeout=180s
kubectl -n kubevirt wait kv kubevirt --for condition=Available --timeout=600s

echo "== the migrated VM on prod-web (VLAN 100) and a db VM on VLAN 200"
kubectl apply -f manifests/nad-prod-web.yaml -f manifests/nad-db.yaml -f manifests/vm-migrated-web.yaml
kubectl wait vmi migrated-web --for condition=Ready --timeout=900s
ping_vm() { docker exec pg-legacy100 ping -c 3 -W 2 10.10.100.21; }
until ping_vm >/dev/null 2>&1; do sleep 5; done
ping_vm
mac=$(docker exec pg-legacy100 ip neigh show 10.10.100.21 | awk '{print $5}')
[[ $mac == 00:50:56:aa:bb:01 ]] || { echo "FAIL: neighbour learned $mac"; exit 1; }
echo "PASS: the VM answers on VLAN 100 with its vSphere MAC"

echo "== live migration to the other worker, the neighbour pinging every 10 ms"
docker exec pg-legacy100 sh -c 'ping -i 0.01 10.10.100.21 > /tmp/ping.log 2>&1 &'
virtctl migrate migrated-web
kubectl wait vmim --all --for jsonpath='{.status.phase}'=Succeeded --timeout=900s
sleep 2
docker exec pg-legacy100 sh -c 'kill -INT $(pidof ping)'
docker exec pg-legacy100 cat /tmp/ping.log | awk -F'icmp_seq=' '/bytes from/ {split($2, a, " "); if (last && a[1] - last > gap) gap = a[1] - last; last = a[1]} END {printf "handover outage: about %d ms\n", (gap - 1) * 10}'
if docker exec pg-legacy200 ping -c 2 -W 1 10.10.100.21 >/dev/null 2>&1; then
    echo "FAIL: VLAN 200 reached the VM on VLAN 100"; exit 1
fi
echo "PASS: VLAN 200 does not reach VLAN 100"
