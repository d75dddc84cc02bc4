package k8s

import (
	rbacv1 "k8s.io/api/rbac/v1"
)

// readVerbs are the verbs the resolver needs: informers list and watch; get
// is for humans debugging with kubectl as the same identity.
var readVerbs = []string{"get", "list", "watch"}

// ClusterRoleRules returns the RBAC rules the Resolver needs, exactly: read
// access to the seven resources its informers watch, cluster-wide. The deploy
// manifests and tests grant these; a fresh slice is returned each call.
//
//	pods, services                    identity of pod and Service IPs, node IPs
//	endpointslices.discovery.k8s.io   which Services a pod IP backs
//	replicasets.apps                  ReplicaSet → Deployment (optional: inferred without it)
//	jobs.batch                        Job → CronJob (optional)
//	namespaces                        their labels, for NetworkPolicy namespaceSelectors (optional)
//	networkpolicies.networking.k8s.io NetworkPolicy attribution of drops (optional)
func ClusterRoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "services"}, Verbs: clone(readVerbs)},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: clone(readVerbs)},
		{APIGroups: []string{"apps"}, Resources: []string{"replicasets"}, Verbs: clone(readVerbs)},
		{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: clone(readVerbs)},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: clone(readVerbs)},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: clone(readVerbs)},
	}
}

// ClusterRoleYAML is ClusterRoleRules as a manifest of ClusterRole kdrop, for deploy/. A unit
// test checks that it says the same as ClusterRoleRules.
const ClusterRoleYAML = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kdrop
rules:
- apiGroups: [""]
  resources: ["pods", "services"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch"]
`

func clone(s []string) []string { return append([]string(nil), s...) }
