package kube_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/e2e/kube"
)

// waitTimeout bounds each wait for a controller: generous, since the
// machine may be busy; nothing here asserts how fast anything is.
const waitTimeout = 2 * time.Minute

// TestControlPlane needs kube-apiserver, kube-controller-manager and etcd,
// built from the module proxy on first use (a quarter of an hour: run it
// with -timeout 30m).
func TestControlPlane(t *testing.T) {
	start := time.Now()
	cp := kube.StartForTest(t)
	t.Logf("control plane ready after %v, kubeconfig %s", time.Since(start).Round(time.Millisecond), cp.Kubeconfig())
	client, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const ns = "sluice-kube-test"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("DeploymentToEndpointSlice", func(t *testing.T) { testDeploymentToEndpointSlice(t, client, ns) })
	t.Run("DryRun", func(t *testing.T) { testDryRun(t, client, ns) })
	t.Run("ServiceAccountRBAC", func(t *testing.T) { testServiceAccountRBAC(t, cp, client, ns) })
}

// testDeploymentToEndpointSlice plays scheduler and kubelet for a
// Deployment's pods and checks the controllers carry it through to an
// EndpointSlice of the Service selecting them.
func testDeploymentToEndpointSlice(t *testing.T, client kubernetes.Interface, ns string) {
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	// The EndpointSlice controller skips pods whose node does not exist.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dep := kube.Deployment(ns, "web", 2, corev1.PodSpec{Containers: []corev1.Container{{
		Name:  "web",
		Image: "registry.invalid/web:1", // never pulled: there is no kubelet
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	}}})
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dualStack := corev1.IPFamilyPolicyRequireDualStack
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector:       labels,
			IPFamilyPolicy: &dualStack,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkClusterIPs(t, svc.Spec.ClusterIPs, kube.ServiceCIDRs)

	var pods []corev1.Pod
	waitFor(t, "the deployment's ReplicaSet to create 2 pods", func() error {
		rsList, err := client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(rsList.Items) != 1 || !ownedBy(rsList.Items[0].ObjectMeta, "Deployment", "web") {
			return fmt.Errorf("want one ReplicaSet owned by the deployment, have %d", len(rsList.Items))
		}
		rs := rsList.Items[0]
		podList, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range podList.Items {
			if ownedBy(p.ObjectMeta, "ReplicaSet", rs.Name) {
				pods = append(pods, p)
			}
		}
		if len(pods) != 2 {
			return fmt.Errorf("%d pods owned by ReplicaSet %s, want 2", len(pods), rs.Name)
		}
		return nil
	})

	want := map[string]string{} // pod IP -> pod name
	for i, pod := range pods {
		ip := fmt.Sprintf("10.244.1.%d", 10+i)
		want[ip] = pod.Name
		kube.BindAndRun(t, client, ns, pod.Name, node.Name, ip)
	}

	waitFor(t, "an EndpointSlice of the service with both pods ready", func() error {
		list, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name,
		})
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, s := range list.Items {
			if s.AddressType != discoveryv1.AddressTypeIPv4 {
				continue
			}
			if len(s.Ports) != 1 || s.Ports[0].Port == nil || *s.Ports[0].Port != 8080 {
				return fmt.Errorf("slice %s ports %+v, want the pods' port 8080", s.Name, s.Ports)
			}
			for _, ep := range s.Endpoints {
				ready := ep.Conditions.Ready != nil && *ep.Conditions.Ready
				if !ready || ep.TargetRef == nil || len(ep.Addresses) != 1 {
					return fmt.Errorf("slice %s endpoint %v not ready for pod (ready %v, target %v)", s.Name, ep.Addresses, ready, ep.TargetRef)
				}
				got[ep.Addresses[0]] = ep.TargetRef.Name
			}
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("ready IPv4 endpoints %v, want %v", got, want)
		}
		return nil
	})
}

// testDryRun checks that a server-side dry run is validated and admitted
// by the API server but not stored.
func testDryRun(t *testing.T, client kubernetes.Interface, ns string) {
	ctx := t.Context()
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "dry", Namespace: ns},
		Data:       map[string]string{"k": "v"},
	}
	got, err := client.CoreV1().ConfigMaps(ns).Create(ctx, cm, dryRun)
	if err != nil {
		t.Fatalf("dry-run create: %v", err)
	}
	// The server filled in what it would have stored.
	if got.Name != "dry" || got.UID == "" || got.CreationTimestamp.IsZero() {
		t.Errorf("dry-run create returned name %q uid %q created %v, want the object as the server would store it", got.Name, got.UID, got.CreationTimestamp)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get after dry-run create: %v, want not found", err)
	}

	bad := cm.DeepCopy()
	bad.Data = map[string]string{"not a key!": "v"}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, bad, dryRun); !apierrors.IsInvalid(err) {
		t.Errorf("dry-run create of an invalid config map: %v, want the server's validation error", err)
	}
}

// testServiceAccountRBAC checks that a service account's token
// authenticates as that account and gets exactly what RBAC grants it.
func testServiceAccountRBAC(t *testing.T, cp *kube.ControlPlane, admin kubernetes.Interface, ns string) {
	ctx := t.Context()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader", Namespace: ns}}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cp.ServiceAccountConfig(ctx, ns, sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self-subject review with the token: %v", err)
	}
	if user, want := review.Status.UserInfo.Username, "system:serviceaccount:"+ns+":reader"; user != want {
		t.Errorf("token authenticates as %q, want %q", user, want)
	}

	if _, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods without any role: %v, want forbidden", err)
	}

	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader-reads-pods", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa.Name}},
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the role binding to let the service account list pods", func() error {
		_, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err
	})
	// The role grants listing pods in its namespace, nothing more.
	if _, err := client.CoreV1().Pods(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list pods in another namespace: %v, want forbidden", err)
	}
	if _, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list services: %v, want forbidden", err)
	}
}

// checkClusterIPs checks a dual-stack service got one address from each
// service range, in order.
func checkClusterIPs(t *testing.T, ips, cidrs []string) {
	t.Helper()
	if len(ips) != len(cidrs) {
		t.Fatalf("service cluster IPs %v, want one from each of %v", ips, cidrs)
	}
	for i, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("service cluster IP %q: %v", s, err)
		}
		if !netip.MustParsePrefix(cidrs[i]).Contains(ip) {
			t.Errorf("service cluster IP %s is outside %s", ip, cidrs[i])
		}
	}
}

func ownedBy(meta metav1.ObjectMeta, kind, name string) bool {
	return slices.ContainsFunc(meta.OwnerReferences, func(r metav1.OwnerReference) bool {
		return r.Kind == kind && r.Name == name && r.Controller != nil && *r.Controller
	})
}

func waitFor(t *testing.T, what string, check func() error) {
	t.Helper()
	kube.WaitFor(t, waitTimeout, what, check)
}
