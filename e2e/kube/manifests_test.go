package kube_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/sluice-mesh/sluice/e2e/kube"
)

// repoRoot is the module root, seen from this package's directory, where
// test binaries run.
const repoRoot = "../.."

var (
	meshPolicyGVR = schema.GroupVersionResource{Group: "sluice.io", Version: "v1alpha1", Resource: "meshpolicies"}
	crdGVK        = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}
	namespaceGVK  = schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}
)

// manifest is one object of a kustomization, with the file it came from.
type manifest struct {
	file string
	obj  *unstructured.Unstructured
}

func (m manifest) String() string {
	name := m.obj.GetName()
	if ns := m.obj.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	return fmt.Sprintf("%s %s (%s)", m.obj.GetKind(), name, m.file)
}

// kustomization is the part of kustomize's format the test models. Any
// other field fails the test, so a kustomization can never gain content
// the test silently leaves unchecked.
type kustomization struct {
	dir       string
	namespace string
	resources []string
	images    []kustomizeImage
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
	Digest  string `json:"digest"`
}

// readKustomization reads dir/kustomization.yaml and loads the objects it
// lists, with its images applied. Its namespace is applied by
// setNamespace, which needs to know which kinds are namespaced.
func readKustomization(t *testing.T, dir string) (kustomization, []manifest) {
	t.Helper()
	path := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := utilyaml.Unmarshal(data, &fields); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	k := kustomization{dir: dir}
	for key, raw := range fields {
		var err error
		switch key {
		case "apiVersion", "kind":
			var s string
			err = json.Unmarshal(raw, &s)
			want := map[string]string{"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}[key]
			if err == nil && s != want {
				err = fmt.Errorf("%q, want %q", s, want)
			}
		case "namespace":
			err = json.Unmarshal(raw, &k.namespace)
		case "resources":
			err = json.Unmarshal(raw, &k.resources)
		case "images":
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			err = dec.Decode(&k.images)
		default:
			err = errors.New("the test does not model this kustomize feature: teach it, or leave the feature out")
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", path, key, err)
		}
	}
	var objs []manifest
	for _, res := range k.resources {
		file := filepath.Join(dir, res)
		if filepath.IsAbs(res) || strings.Contains(res, "://") || filepath.Dir(res) != "." {
			t.Fatalf("%s: resource %q: the test reads only files beside the kustomization", path, res)
		}
		if info, err := os.Stat(file); err != nil || !info.Mode().IsRegular() {
			t.Fatalf("%s: resource %q is not a file: %v", path, res, err)
		}
		docs := readObjects(t, file)
		if len(docs) == 0 {
			t.Fatalf("%s: resource %q holds no object", path, res)
		}
		objs = append(objs, docs...)
	}
	for _, img := range k.images {
		if img.Name == "" || (img.NewName == "" && img.NewTag == "" && img.Digest == "") || (img.NewTag != "" && img.Digest != "") {
			t.Fatalf("%s: image %+v: want a name and a newName, newTag or digest (not both of the last two)", path, img)
		}
		used := false
		for _, m := range objs {
			used = setImage(m.obj.Object, img) || used
		}
		if !used {
			t.Errorf("%s: image %q is not the image of any container", path, img.Name)
		}
	}
	return k, objs
}

// readObjects reads every object of a multi-document YAML file.
func readObjects(t *testing.T, file string) []manifest {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var objs []manifest
	for i := 0; ; i++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue // an empty document, e.g. after a leading ---
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		if obj.GetName() == "" {
			t.Fatalf("%s: document %d (%s) has no metadata.name", file, i, obj.GetKind())
		}
		objs = append(objs, manifest{file: filepath.Base(file), obj: obj})
	}
}

// setImage sets img on every container and init container of obj whose
// image has img's name, as kustomize's images field does, and reports
// whether there was one.
func setImage(obj map[string]any, img kustomizeImage) bool {
	used := false
	for key, v := range obj {
		switch v := v.(type) {
		case map[string]any:
			used = setImage(v, img) || used
		case []any:
			for _, item := range v {
				c, ok := item.(map[string]any)
				if !ok {
					continue
				}
				if image, ok := c["image"].(string); ok && (key == "containers" || key == "initContainers") {
					name, tag := splitImage(image)
					if name == img.Name {
						if img.NewName != "" {
							name = img.NewName
						}
						switch {
						case img.Digest != "":
							tag = "@" + img.Digest
						case img.NewTag != "":
							tag = ":" + img.NewTag
						}
						c["image"] = name + tag
						used = true
					}
				}
				used = setImage(c, img) || used
			}
		}
	}
	return used
}

// splitImage splits an image reference into its name and its ":tag" or
// "@digest" suffix.
func splitImage(image string) (name, tag string) {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[:i], image[i:]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i], image[i:]
	}
	return image, ""
}

// setNamespace applies the kustomization's namespace to its namespaced
// objects. Kustomize also rewrites other namespaces (of objects, of role
// binding subjects) in ways the test does not model, so every namespace
// already written must be the kustomization's.
func setNamespace(t *testing.T, k kustomization, objs []manifest, mapper meta.RESTMapper) {
	t.Helper()
	if k.namespace == "" {
		return
	}
	for _, m := range objs {
		namespaced, err := isNamespaced(mapper, m.obj)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if !namespaced {
			continue
		}
		if ns := m.obj.GetNamespace(); ns != "" && ns != k.namespace {
			t.Fatalf("%s names namespace %q, the kustomization %q: the test does not model kustomize moving objects", m, ns, k.namespace)
		}
		m.obj.SetNamespace(k.namespace)
	}
	for _, m := range objs {
		subjects, _, _ := unstructured.NestedSlice(m.obj.Object, "subjects")
		for _, s := range subjects {
			s, _ := s.(map[string]any)
			if s["kind"] == "ServiceAccount" && s["namespace"] != k.namespace {
				t.Fatalf("%s: subject %v is not in namespace %q: the test does not model kustomize's rewriting of subjects", m, s, k.namespace)
			}
		}
	}
}

func isNamespaced(mapper meta.RESTMapper, obj *unstructured.Unstructured) (bool, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return false, err
	}
	return mapping.Scope.Name() == meta.RESTScopeNameNamespace, nil
}

// cluster is the admin's view of the test's API server.
type cluster struct {
	cp     *kube.ControlPlane
	client kubernetes.Interface
	dyn    dynamic.Interface
	cached discovery.CachedDiscoveryInterface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func (c *cluster) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(mapping.Resource), nil
}

// dryRun creates m with a server-side dry run: validated, defaulted and
// admitted by the API server, never stored.
func (c *cluster) dryRun(t *testing.T, m manifest) *unstructured.Unstructured {
	t.Helper()
	res, err := c.resource(m.obj)
	if err != nil {
		t.Fatalf("%s: %v", m, err)
	}
	got, err := res.Create(t.Context(), m.obj.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run create %s: %v", m, err)
	}
	if got.GetUID() == "" {
		t.Fatalf("dry-run create %s returned no object as it would be stored", m)
	}
	if _, err := res.Get(t.Context(), m.obj.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("get %s after its dry-run create: %v, want not found", m, err)
	}
	return got
}

// create creates m for real; a CRD is waited for until it is established
// and its kinds are known to the mapper.
func (c *cluster) create(t *testing.T, m manifest) {
	t.Helper()
	res, err := c.resource(m.obj)
	if err != nil {
		t.Fatalf("%s: %v", m, err)
	}
	if _, err := res.Create(t.Context(), m.obj.DeepCopy(), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s: %v", m, err)
	}
	if m.obj.GroupVersionKind() != crdGVK {
		return
	}
	waitFor(t, "CRD "+m.obj.GetName()+" to be established", func() error {
		crd, err := res.Get(t.Context(), m.obj.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			cond, _ := cond.(map[string]any)
			if cond["type"] == "Established" && cond["status"] == "True" {
				return nil
			}
		}
		return fmt.Errorf("conditions %v", conds)
	})
	c.cached.Invalidate()
	c.mapper.Reset()
}

// TestManifests validates the install (manifests/), the uninstall
// (manifests/uninstall/) and the example policies against a real API
// server, and checks the RBAC they grant with real requests as each
// service account. It needs kube-apiserver and etcd, built on first use
// (run it with -timeout 30m).
func TestManifests(t *testing.T) {
	cp := kube.StartForTest(t)
	cfg := cp.Config()
	c := &cluster{cp: cp}
	var err error
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.cached = memory.NewMemCacheClient(disc)
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(c.cached)

	install, installObjs := readKustomization(t, filepath.Join(repoRoot, "manifests"))
	setNamespace(t, install, installObjs, c.mapper)
	cleanup, cleanupObjs := readKustomization(t, filepath.Join(repoRoot, "manifests", "uninstall"))
	setNamespace(t, cleanup, cleanupObjs, c.mapper)

	t.Run("Kustomize", func(t *testing.T) {
		testKustomizeAgrees(t, install, installObjs)
		testKustomizeAgrees(t, cleanup, cleanupObjs)
	})
	t.Run("DryRunInstall", func(t *testing.T) { testDryRunAll(t, c, installObjs) })
	t.Run("DryRunUninstall", func(t *testing.T) { testDryRunAll(t, c, cleanupObjs) })
	if t.Failed() {
		return // the rest needs the namespace and the CRD
	}
	t.Run("RBAC", func(t *testing.T) { testManifestRBAC(t, c, installObjs) })
	t.Run("Pods", func(t *testing.T) {
		testPodsAdmitted(t, c, installObjs)
		testPodsAdmitted(t, c, cleanupObjs)
	})
	t.Run("ExamplePolicies", func(t *testing.T) { testExamplePolicies(t, c) })
}

// testPodsAdmitted dry-runs a pod made from each workload's template, as
// its controller would make it: pod admission (service account, priority
// class, Pod Security of the namespace) runs on pods, not on their
// controllers. The service accounts must exist.
func testPodsAdmitted(t *testing.T, c *cluster, objs []manifest) {
	for _, m := range objs {
		template, ok, _ := unstructured.NestedMap(m.obj.Object, "spec", "template")
		if !ok {
			continue
		}
		ns := m.obj.GetNamespace()
		sa, _, _ := unstructured.NestedString(template, "spec", "serviceAccountName")
		if sa == "" {
			sa = "default" // made by the controller manager
		}
		waitFor(t, "service account "+ns+"/"+sa, func() error {
			_, err := c.client.CoreV1().ServiceAccounts(ns).Get(t.Context(), sa, metav1.GetOptions{})
			return err
		})
		pod := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1",
			"kind":       "Pod",
			"metadata":   template["metadata"],
			"spec":       template["spec"],
		}}
		pod.SetNamespace(ns)
		pod.SetName(m.obj.GetName() + "-pod")
		got := c.dryRun(t, manifest{file: m.file, obj: pod})
		if prio, _, _ := unstructured.NestedInt64(got.Object, "spec", "priority"); prio == 0 && template["spec"].(map[string]any)["priorityClassName"] != nil {
			t.Errorf("pod of %s: priority 0, want its priority class's", m)
		}
		t.Logf("dry-run create a pod of %s: admitted", m)
	}
}

// testDryRunAll dry-runs the creation of every object. Namespaces and
// CRDs are dry-run, then created for real: the objects in them, or of
// their kinds, cannot be dry-run without them.
func testDryRunAll(t *testing.T, c *cluster, objs []manifest) {
	first := func(m manifest) bool {
		gvk := m.obj.GroupVersionKind()
		return gvk == namespaceGVK || gvk == crdGVK
	}
	for _, m := range objs {
		if first(m) {
			c.dryRun(t, m)
			c.create(t, m)
		}
	}
	for _, m := range objs {
		if !first(m) {
			got := c.dryRun(t, m)
			t.Logf("dry-run create %s: admitted", m)
			checkPodTemplate(t, m, got)
		}
	}
}

// checkPodTemplate checks what the API server made of a workload's pod
// template: the images kustomize set, and no container left without
// resources.
func checkPodTemplate(t *testing.T, m manifest, got *unstructured.Unstructured) {
	t.Helper()
	for _, key := range []string{"containers", "initContainers"} {
		containers, _, _ := unstructured.NestedSlice(got.Object, "spec", "template", "spec", key)
		for _, c := range containers {
			c, _ := c.(map[string]any)
			image, _ := c["image"].(string)
			if !strings.Contains(image, "/") {
				t.Errorf("%s: container %v has image %q, which no images entry of the kustomization replaced", m, c["name"], image)
			}
			if limit, _, _ := unstructured.NestedString(c, "resources", "limits", "memory"); limit == "" {
				t.Errorf("%s: container %v has no memory limit", m, c["name"])
			}
			if req, _, _ := unstructured.NestedString(c, "resources", "requests", "cpu"); req == "" {
				t.Errorf("%s: container %v has no CPU request", m, c["name"])
			}
		}
	}
}

// testKustomizeAgrees checks that kubectl's kustomize builds the same
// objects as the test's reading of the kustomization.
func testKustomizeAgrees(t *testing.T, k kustomization, objs []manifest) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skipf("skipping the comparison with kubectl kustomize: %v", err)
	}
	out, err := exec.Command(kubectl, "kustomize", k.dir).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			err = fmt.Errorf("%w: %s", err, exit.Stderr)
		}
		t.Fatalf("kubectl kustomize %s: %v", k.dir, err)
	}
	built := filepath.Join(t.TempDir(), "built.yaml")
	if err := os.WriteFile(built, out, 0o600); err != nil {
		t.Fatal(err)
	}
	key := func(o *unstructured.Unstructured) string {
		return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
	}
	want := map[string]map[string]any{}
	for _, m := range objs {
		want[key(m.obj)] = m.obj.Object
	}
	got := map[string]map[string]any{}
	for _, m := range readObjects(t, built) {
		got[key(m.obj)] = m.obj.Object
	}
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want))) {
		t.Fatalf("kubectl kustomize %s builds %v, the test read %v", k.dir, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for name, obj := range got {
		if !reflect.DeepEqual(obj, want[name]) {
			a, _ := json.Marshal(obj)
			b, _ := json.Marshal(want[name])
			t.Errorf("kubectl kustomize %s builds %s as\n%s\nthe test read\n%s", k.dir, name, a, b)
		}
	}
}

// find returns the one object of objs of the given kind and name.
func find(t *testing.T, objs []manifest, kind, name string) manifest {
	t.Helper()
	for _, m := range objs {
		if m.obj.GetKind() == kind && m.obj.GetName() == name {
			return m
		}
	}
	t.Fatalf("the manifests have no %s %s", kind, name)
	return manifest{}
}

// testManifestRBAC creates the install's service accounts and RBAC for
// real and checks, with requests authenticated by each account's token,
// what each may and may not do.
func testManifestRBAC(t *testing.T, c *cluster, objs []manifest) {
	ctx := t.Context()
	for _, m := range objs {
		switch m.obj.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			c.create(t, m)
		}
	}
	agentSA := find(t, objs, "ServiceAccount", "sluice-agent")
	cpSA := find(t, objs, "ServiceAccount", "sluice-controlplane")

	// Something to read and write: a namespace with a service and a
	// policy, made by the admin.
	const ns = "sluice-rbac-test"
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := c.client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sluice.io/v1alpha1",
		"kind":       "MeshPolicy",
		"metadata":   map[string]any{"name": "web", "namespace": ns},
		"spec":       map[string]any{"action": "DENY"},
	}}
	if _, err := c.dyn.Resource(meshPolicyGVR).Namespace(ns).Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	agent := c.clientsFor(t, agentSA)
	controlplane := c.clientsFor(t, cpSA)
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	// RBAC reaches the authorizer through an informer: wait for the first
	// grant of each before asserting anything.
	waitFor(t, "the agent's role binding to take effect", func() error {
		_, err := agent.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		return err
	})
	waitFor(t, "the control plane's role binding to take effect", func() error {
		_, err := controlplane.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		return err
	})

	t.Run("Agent", func(t *testing.T) {
		a := agent.client
		allowed(t, "list pods in every namespace", listErr(a.CoreV1().Pods("").List(ctx, metav1.ListOptions{})))
		allowed(t, "list the pods of one node", listErr(a.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"})))
		allowed(t, "watch pods", watchErr(a.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})))
		allowed(t, "list namespaces", listErr(a.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})))
		allowed(t, "watch namespaces", watchErr(a.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})))
		allowed(t, "get a namespace", getErr(a.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})))

		forbidden(t, "list secrets", listErr(a.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})))
		forbidden(t, "list secrets of its own namespace", listErr(a.CoreV1().Secrets(agentSA.obj.GetNamespace()).List(ctx, metav1.ListOptions{})))
		forbidden(t, "list services", listErr(a.CoreV1().Services("").List(ctx, metav1.ListOptions{})))
		forbidden(t, "list endpointslices", listErr(a.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})))
		forbidden(t, "list meshpolicies", listErr(agent.dyn.Resource(meshPolicyGVR).List(ctx, metav1.ListOptions{})))
		forbidden(t, "create a pod", getErr(a.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
		}, dryRun)))
		forbidden(t, "label a namespace", getErr(a.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"sluice.io/mesh":"enabled"}}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})))
		forbidden(t, "create an event", getErr(a.CoreV1().Events(ns).Create(ctx, coreEvent(ns, svc), dryRun)))
	})

	t.Run("ControlPlane", func(t *testing.T) {
		a := controlplane.client
		policies := controlplane.dyn.Resource(meshPolicyGVR)
		allowed(t, "list services", listErr(a.CoreV1().Services("").List(ctx, metav1.ListOptions{})))
		allowed(t, "watch services", watchErr(a.CoreV1().Services("").Watch(ctx, metav1.ListOptions{})))
		allowed(t, "list endpointslices", listErr(a.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})))
		allowed(t, "watch endpointslices", watchErr(a.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{})))
		allowed(t, "list pods", listErr(a.CoreV1().Pods("").List(ctx, metav1.ListOptions{})))
		allowed(t, "watch pods", watchErr(a.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})))
		allowed(t, "list meshpolicies", listErr(policies.List(ctx, metav1.ListOptions{})))
		allowed(t, "watch meshpolicies", watchErr(policies.Watch(ctx, metav1.ListOptions{})))

		// Status: update it, then patch it, and see both stored.
		p, err := policies.Namespace(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get meshpolicy %s/web: %v", ns, err)
		}
		if err := unstructured.SetNestedSlice(p.Object, []any{map[string]any{
			"type": "Accepted", "status": "True", "reason": "Accepted", "message": "served",
			"lastTransitionTime": metav1.Now().UTC().Format("2006-01-02T15:04:05Z"),
		}}, "status", "conditions"); err != nil {
			t.Fatal(err)
		}
		allowed(t, "update meshpolicies/status", getErr(policies.Namespace(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})))
		allowed(t, "patch meshpolicies/status", getErr(policies.Namespace(ns).Patch(ctx, "web", types.MergePatchType,
			[]byte(`{"status":{"coveredServices":["`+ns+`/web"]}}`), metav1.PatchOptions{}, "status")))
		stored, err := c.dyn.Resource(meshPolicyGVR).Namespace(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(stored.Object, "status", "conditions")
		covered, _, _ := unstructured.NestedStringSlice(stored.Object, "status", "coveredServices")
		if len(conds) != 1 || !slices.Equal(covered, []string{ns + "/web"}) {
			t.Errorf("stored status %v, want the control plane's condition and covered services", stored.Object["status"])
		}

		event, err := a.CoreV1().Events(ns).Create(ctx, coreEvent(ns, svc), metav1.CreateOptions{})
		allowed(t, "create an event (core)", err)
		if err == nil {
			allowed(t, "patch an event (core)", getErr(a.CoreV1().Events(ns).Patch(ctx, event.Name, types.MergePatchType,
				[]byte(`{"count":2}`), metav1.PatchOptions{})))
		}
		allowed(t, "create an event (events.k8s.io)", getErr(a.EventsV1().Events(ns).Create(ctx, eventsEvent(ns, svc), metav1.CreateOptions{})))

		forbidden(t, "list secrets", listErr(a.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})))
		forbidden(t, "list secrets of its own namespace", listErr(a.CoreV1().Secrets(cpSA.obj.GetNamespace()).List(ctx, metav1.ListOptions{})))
		forbidden(t, "list namespaces", listErr(a.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})))
		mine, err := a.CoreV1().Services(ns).Get(ctx, svc.Name, metav1.GetOptions{})
		allowed(t, "get a service", err)
		if err == nil {
			mine.Labels = map[string]string{"changed": "yes"}
			forbidden(t, "update a service", getErr(a.CoreV1().Services(ns).Update(ctx, mine, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})))
		}
		forbidden(t, "update a meshpolicy's spec", getErr(policies.Namespace(ns).Patch(ctx, "web", types.MergePatchType,
			[]byte(`{"spec":{"action":"ALLOW"}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})))
		forbidden(t, "delete a pod", a.CoreV1().Pods(ns).Delete(ctx, "any", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}))
	})
}

// saClients are clients that authenticate as one service account.
type saClients struct {
	client kubernetes.Interface
	dyn    dynamic.Interface
}

func (c *cluster) clientsFor(t *testing.T, sa manifest) saClients {
	t.Helper()
	cfg, err := c.cp.ServiceAccountConfig(t.Context(), sa.obj.GetNamespace(), sa.obj.GetName())
	if err != nil {
		t.Fatalf("%s: %v", sa, err)
	}
	return saClients{client: kubernetes.NewForConfigOrDie(cfg), dyn: dynamic.NewForConfigOrDie(rest.CopyConfig(cfg))}
}

func listErr[T any](_ T, err error) error { return err }
func getErr[T any](_ T, err error) error  { return err }

func watchErr(w interface{ Stop() }, err error) error {
	if err == nil {
		w.Stop()
	}
	return err
}

func allowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v, want it allowed", what, err)
	}
}

func forbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: %v, want forbidden", what, err)
	}
}

func coreEvent(ns string, svc *corev1.Service) *corev1.Event {
	now := metav1.Now()
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "sluice-", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Service", Namespace: ns, Name: svc.Name, UID: svc.UID,
		},
		Reason:         "Skipped",
		Message:        "a test event",
		Type:           corev1.EventTypeNormal,
		Source:         corev1.EventSource{Component: "sluice-controlplane"},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
}

func eventsEvent(ns string, svc *corev1.Service) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: "sluice-", Namespace: ns},
		EventTime:           metav1.NowMicro(),
		ReportingController: "sluice.io/controlplane",
		ReportingInstance:   "sluice-controlplane-test",
		Action:              "Translate",
		Reason:              "Skipped",
		Note:                "a test event",
		Type:                corev1.EventTypeNormal,
		Regarding: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Service", Namespace: ns, Name: svc.Name, UID: svc.UID,
		},
	}
}

// testExamplePolicies dry-runs the example policies, and checks that the
// API server rejects invalid ones naming the field, through the CRD's
// schema.
func testExamplePolicies(t *testing.T, c *cluster) {
	ctx := t.Context()
	examples := readObjects(t, filepath.Join(repoRoot, "examples", "kubernetes", "meshpolicy.yaml"))
	if len(examples) < 2 {
		t.Fatalf("examples/kubernetes/meshpolicy.yaml has %d policies, want a few", len(examples))
	}
	for _, m := range examples {
		if gvk := m.obj.GroupVersionKind(); gvk.GroupVersion() != meshPolicyGVR.GroupVersion() || gvk.Kind != "MeshPolicy" {
			t.Fatalf("%s is not a sluice.io/v1alpha1 MeshPolicy", m)
		}
		ns := m.obj.GetNamespace()
		if ns == "" {
			t.Fatalf("%s names no namespace", m)
		}
		_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		got := c.dryRun(t, m)
		// The schema's default shows the server applied it.
		if action, _, _ := unstructured.NestedString(got.Object, "spec", "action"); action == "" {
			t.Errorf("dry-run %s: spec.action is empty, want the schema's default", m)
		}
	}

	base := examples[0]
	for _, tc := range []struct {
		name  string
		path  []string
		value any
		field string
	}{
		{"unknown action", []string{"spec", "action"}, "PERMIT", "spec.action"},
		{"port out of range", []string{"spec", "rules"}, []any{map[string]any{"ports": []any{int64(70000)}}}, "spec.rules[0].ports[0]"},
		{"selector operator", []string{"spec", "selector"}, map[string]any{"matchExpressions": []any{map[string]any{"key": "app", "operator": "Equals"}}}, "spec.selector.matchExpressions[0].operator"},
	} {
		bad := base.obj.DeepCopy()
		if err := unstructured.SetNestedField(bad.Object, tc.value, tc.path...); err != nil {
			t.Fatal(err)
		}
		res, err := c.resource(bad)
		if err != nil {
			t.Fatal(err)
		}
		_, err = res.Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: dry-run create of %s: %v, want invalid naming %s", tc.name, base, err, tc.field)
			continue
		}
		t.Logf("%s: rejected: %v", tc.name, err)
	}
}

// TestManifestsFlags checks, without an API server, that every container
// running the sluice image passes only flags its subcommand defines, and
// that the agent and the cleanup agree on where the datapath lives and
// mount it.
func TestManifestsFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sluice")
	build := exec.Command("go", "build", "-o", bin, "./cmd/sluice")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sluice: %v\n%s", err, out)
	}

	_, install := readKustomization(t, filepath.Join(repoRoot, "manifests"))
	_, cleanup := readKustomization(t, filepath.Join(repoRoot, "manifests", "uninstall"))
	help := map[string]string{} // subcommand -> its --help
	var runs []sluiceRun
	for _, m := range slices.Concat(install, cleanup) {
		runs = append(runs, sluiceRuns(t, m)...)
	}
	if len(runs) == 0 {
		t.Fatal("no container of the manifests runs the sluice image")
	}
	for _, r := range runs {
		if _, ok := help[r.sub]; !ok {
			out, err := exec.Command(bin, r.sub, "--help").CombinedOutput()
			if err != nil {
				t.Fatalf("sluice %s --help: %v\n%s", r.sub, err, out)
			}
			help[r.sub] = string(out)
		}
		defined := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(help[r.sub], -1) {
			defined[m[1]] = true
		}
		for _, name := range slices.Sorted(maps.Keys(r.flags)) {
			if !defined[name] {
				t.Errorf("%s: sluice %s has no flag --%s", r, r.sub, name)
			}
		}
	}

	agent := runOf(t, runs, "agent")
	uninstall := runOf(t, runs, "uninstall")
	if _, ok := agent.flags["uninstall-on-exit"]; ok {
		t.Errorf("%s: --uninstall-on-exit removes the datapath whenever the agent stops (an update, a restart)", agent)
	}
	if _, ok := agent.flags["kubernetes"]; !ok {
		t.Errorf("%s: no --kubernetes", agent)
	}
	// Where the datapath lives: the flag's value, else its default.
	value := func(r sluiceRun, flag string) string {
		if v, ok := r.flags[flag]; ok {
			return v
		}
		m := regexp.MustCompile(`(?m)^\s+--` + flag + ` .*\(default "([^"]*)"\)$`).FindStringSubmatch(help[r.sub])
		if m == nil {
			return "" // no default: found at run time (the cgroup2 root)
		}
		return m[1]
	}
	for _, flag := range []string{"pin-dir", "cgroup"} {
		if a, u := value(agent, flag), value(uninstall, flag); a != u {
			t.Errorf("the agent's --%s is %q, the cleanup's %q: the cleanup would look elsewhere", flag, a, u)
		}
	}
	pinDir := value(agent, "pin-dir")
	if pinDir == "" {
		t.Fatal("found no --pin-dir default in sluice agent --help")
	}
	for _, r := range []sluiceRun{agent, uninstall} {
		r.mounted(t, pinDir)
		r.mounted(t, "/sys/fs/cgroup")
	}
	socket := value(agent, "socket")
	if socket == "" {
		t.Fatal("found no --socket default in sluice agent --help")
	}
	agent.mounted(t, filepath.Dir(socket))

	// The L7 proxy listens where the agent hands L7 connections, and
	// reaches the agent's pins and socket where the agent keeps them.
	proxy := runOf(t, runs, "proxy")
	if l, a := proxy.flags["listen"], agent.flags["l7-proxy"]; l == "" || l != a {
		t.Errorf("%s listens on %q, the agent's --l7-proxy is %q", proxy, l, a)
	}
	if p := value(proxy, "pin-dir"); p != pinDir {
		t.Errorf("%s: --pin-dir %q, the agent's is %q", proxy, p, pinDir)
	}
	if s := value(proxy, "agent-socket"); s != socket {
		t.Errorf("%s: --agent-socket %q, the agent's --socket is %q", proxy, s, socket)
	}
	proxy.mounted(t, pinDir)
	proxy.mounted(t, filepath.Dir(socket))
}

// sluiceRun is one container that runs the sluice image.
type sluiceRun struct {
	where  string
	sub    string
	flags  map[string]string // name -> value ("" for a bare boolean)
	mounts map[string]bool   // mount paths
}

func (r sluiceRun) String() string { return r.where }

// mounted checks that path lies under one of the container's mounts.
func (r sluiceRun) mounted(t *testing.T, path string) {
	t.Helper()
	for m := range r.mounts {
		if path == m || strings.HasPrefix(path, strings.TrimSuffix(m, "/")+"/") {
			return
		}
	}
	t.Errorf("%s: %s is not under any of its mounts %v", r, path, slices.Sorted(maps.Keys(r.mounts)))
}

// sluiceRuns returns the containers of a workload's pod template that run
// the sluice image, with their subcommand and flags.
func sluiceRuns(t *testing.T, m manifest) []sluiceRun {
	t.Helper()
	var runs []sluiceRun
	for _, key := range []string{"initContainers", "containers"} {
		containers, _, err := unstructured.NestedSlice(m.obj.Object, "spec", "template", "spec", key)
		if err != nil {
			t.Fatalf("%s: %s: %v", m, key, err)
		}
		for _, c := range containers {
			c, _ := c.(map[string]any)
			image, _ := c["image"].(string)
			if name, _ := splitImage(image); !strings.HasSuffix(name, "/sluice") {
				continue
			}
			where := fmt.Sprintf("%s container %v", m, c["name"])
			if _, ok := c["command"]; ok {
				t.Fatalf("%s: sets command; the image's entry point is /sluice and the test reads only args", where)
			}
			args, _, err := unstructured.NestedStringSlice(c, "args")
			if err != nil || len(args) == 0 || strings.HasPrefix(args[0], "-") {
				t.Fatalf("%s: args %v: want a sluice subcommand first (%v)", where, args, err)
			}
			r := sluiceRun{where: where, sub: args[0], flags: map[string]string{}, mounts: map[string]bool{}}
			for _, a := range args[1:] {
				if !strings.HasPrefix(a, "--") {
					t.Fatalf("%s: argument %q: the test reads only --name or --name=value", where, a)
				}
				name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				r.flags[name] = value
			}
			mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
			for _, vm := range mounts {
				vm, _ := vm.(map[string]any)
				if p, ok := vm["mountPath"].(string); ok {
					r.mounts[p] = true
				}
			}
			runs = append(runs, r)
		}
	}
	return runs
}

// runOf returns the one container that runs sluice sub.
func runOf(t *testing.T, runs []sluiceRun, sub string) sluiceRun {
	t.Helper()
	var found []sluiceRun
	for _, r := range runs {
		if r.sub == sub {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d containers run sluice %s (%v), want one", len(found), sub, found)
	}
	return found[0]
}
