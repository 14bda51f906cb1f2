package controlplane_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/xds/controlplane"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// names returns the names of the resources in a SotW response, sorted.
func names(t *testing.T, resources []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range resources {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch r := m.(type) {
		case *listenerv3.Listener:
			out = append(out, r.Name)
		case *clusterv3.Cluster:
			out = append(out, r.Name)
		case *endpointv3.ClusterLoadAssignment:
			out = append(out, r.ClusterName)
		default:
			t.Fatalf("unexpected resource %T", m)
		}
	}
	slices.Sort(out)
	return out
}

func deltaNames(t *testing.T, resp *discoverygrpc.DeltaDiscoveryResponse) []string {
	t.Helper()
	var anys []*anypb.Any
	for _, r := range resp.Resources {
		anys = append(anys, r.Resource)
		if got := names(t, []*anypb.Any{r.Resource}); got[0] != r.Name {
			t.Errorf("delta resource named %q holds %q", r.Name, got[0])
		}
	}
	return names(t, anys)
}

func deltaVersions(resp *discoverygrpc.DeltaDiscoveryResponse) map[string]string {
	v := map[string]string{}
	for _, r := range resp.Resources {
		v[r.Name] = r.Version
	}
	return v
}

func sameNames(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// The resources the test file renders to, from package mesh.
func rendered(t *testing.T, content string) mesh.Resources {
	t.Helper()
	m, err := mesh.Parse("mesh.yaml", []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	return m.Resources()
}

var claNames = []string{"demo/dns:53/udp", "demo/web:80"}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	invalid := filepath.Join(dir, "invalid.yaml")
	if err := os.WriteFile(invalid, []byte("services:\n  - name: web\n    vips: [10.96.0.300]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	valid := filepath.Join(dir, "valid.yaml")
	if err := os.WriteFile(valid, []byte(meshFile), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts controlplane.Options
		is   error
		msg  string
	}{
		{"no path", controlplane.Options{}, controlplane.ErrInvalidOptions, "ConfigPath is required"},
		{"negative interval", controlplane.Options{ConfigPath: valid, PollInterval: -1}, controlplane.ErrInvalidOptions, "negative"},
		{"missing file", controlplane.Options{ConfigPath: filepath.Join(dir, "missing.yaml")}, fs.ErrNotExist, "missing.yaml"},
		{"invalid file", controlplane.Options{ConfigPath: invalid}, mesh.ErrInvalid,
			invalid + `:3: services[0].vips[0]: "10.96.0.300" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := controlplane.New(tc.opts)
			if err == nil {
				t.Fatalf("New succeeded, version %s", s.Version())
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("New error = %v, want one matching %v and containing %q", err, tc.is, tc.msg)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, meshFile)
	a, err := controlplane.New(controlplane.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	// The same resources written differently have the same version.
	writeFile(t, path, "# reordered, same services\n"+strings.Replace(meshFile, "weight: 3", "weight: 3 # b", 1))
	b, err := controlplane.New(controlplane.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if a.Version() == "" || a.Version() != b.Version() {
		t.Errorf("versions %q and %q, want equal and not empty", a.Version(), b.Version())
	}
	writeFile(t, path, strings.Replace(meshFile, "weight: 3", "weight: 4", 1))
	c, err := controlplane.New(controlplane.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if c.Version() == a.Version() {
		t.Errorf("version %q did not change with a weight", c.Version())
	}
	if a.LastError() != nil {
		t.Errorf("LastError = %v", a.LastError())
	}
}

func TestSotW(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	want := rendered(t, meshFile)
	st := openSotW(t, dial(t, s.addr, nil))

	st.subscribe(listenerType)
	lds := st.next(listenerType)
	if lds.VersionInfo != s.Version() {
		t.Errorf("LDS version %q, server version %q", lds.VersionInfo, s.Version())
	}
	sameNames(t, "listeners", names(t, lds.Resources), "demo/web:80", "demo/dns:53/udp")
	for _, a := range lds.Resources {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(want.Listeners, func(w *listenerv3.Listener) bool { return w.Name == l.Name })
		if !proto.Equal(&l, want.Listeners[i]) {
			t.Errorf("listener %s = %v, want %v", l.Name, &l, want.Listeners[i])
		}
	}
	st.ack(lds)

	st.subscribe(clusterType)
	cds := st.next(clusterType)
	sameNames(t, "clusters", names(t, cds.Resources), claNames...)
	st.ack(cds)

	st.subscribe(endpointType, claNames...)
	eds := st.next(endpointType)
	sameNames(t, "assignments", names(t, eds.Resources), claNames...)
	for _, a := range eds.Resources {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(want.Endpoints, func(w *endpointv3.ClusterLoadAssignment) bool { return w.ClusterName == cla.ClusterName })
		if !proto.Equal(&cla, want.Endpoints[i]) {
			t.Errorf("assignment %s = %v, want %v", cla.ClusterName, &cla, want.Endpoints[i])
		}
	}
	st.ack(eds, claNames...)
	st.none()
}

// In ADS mode go-control-plane answers a state-of-the-world EDS request only
// if it names every assignment of the snapshot: a client must subscribe to
// all its clusters' assignments at once.
func TestSotWPartialEDSIsNotAnswered(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openSotW(t, dial(t, s.addr, nil))
	st.subscribe(endpointType, "demo/web:80")
	st.none()
	st.send(&discoverygrpc.DiscoveryRequest{TypeUrl: endpointType, ResourceNames: claNames})
	sameNames(t, "assignments", names(t, st.next(endpointType).Resources), claNames...)
}

const apiService = `
  - name: api
    namespace: demo
    vips: [10.96.0.20]
    ports: [{port: 443}]
    endpoints: [{address: 10.244.0.21}]
`

func TestSotWEdits(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openSotW(t, dial(t, s.addr, nil))
	st.subscribe(listenerType)
	lds := st.next(listenerType)
	st.ack(lds)
	st.subscribe(clusterType)
	cds := st.next(clusterType)
	st.ack(cds)
	v1 := s.Version()

	t.Run("unchanged content", func(t *testing.T) {
		writeFile(t, s.path, meshFile+"\n# a comment changes no resource\n")
		st.none()
		if s.Version() != v1 {
			t.Errorf("version %s → %s with no change of resources", v1, s.Version())
		}
	})

	t.Run("valid edit", func(t *testing.T) {
		writeFile(t, s.path, meshFile+apiService)
		lds = st.next(listenerType)
		sameNames(t, "listeners", names(t, lds.Resources), "demo/api:443", "demo/web:80", "demo/dns:53/udp")
		if lds.VersionInfo == v1 || lds.VersionInfo != s.Version() {
			t.Errorf("new LDS version %q, first %q, server %q", lds.VersionInfo, v1, s.Version())
		}
		st.ack(lds)
		cds = st.next(clusterType)
		sameNames(t, "clusters", names(t, cds.Resources), "demo/api:443", "demo/web:80", "demo/dns:53/udp")
		st.ack(cds)
		if !strings.Contains(s.logs.String(), "msg=\"serving mesh file\"") || !strings.Contains(s.logs.String(), "version="+s.Version()) {
			t.Errorf("no info line for the new version:\n%s", s.logs)
		}
	})

	v2 := s.Version()
	t.Run("invalid edit", func(t *testing.T) {
		writeFile(t, s.path, meshFile+apiService+"  - name: Bad\n")
		eventually(t, "LastError", func() bool { return s.LastError() != nil })
		err := s.LastError()
		if !errors.Is(err, mesh.ErrInvalid) || !strings.HasPrefix(err.Error(), s.path+":24: services[3].name: ") {
			t.Errorf("LastError = %v, want an invalid-file error at %s:24: services[3].name", err, s.path)
		}
		st.none()
		if s.Version() != v2 {
			t.Errorf("version %s → %s after an invalid edit", v2, s.Version())
		}
		if n := strings.Count(s.logs.String(), "mesh file edit rejected"); n != 1 {
			t.Errorf("%d error lines for one invalid edit, want 1:\n%s", n, s.logs)
		}
		if !strings.Contains(s.logs.String(), s.path+":24: services[3].name") {
			t.Errorf("error log does not name the file and line:\n%s", s.logs)
		}

		// A new client still gets the last valid version.
		other := openSotW(t, dial(t, s.addr, nil))
		other.subscribe(listenerType)
		if got := other.next(listenerType).VersionInfo; got != v2 {
			t.Errorf("new client got version %s, want %s", got, v2)
		}
	})

	t.Run("fixed", func(t *testing.T) {
		writeFile(t, s.path, meshFile)
		lds = st.next(listenerType)
		sameNames(t, "listeners", names(t, lds.Resources), "demo/web:80", "demo/dns:53/udp")
		if lds.VersionInfo != v1 {
			t.Errorf("version %s, want %s as the first time this content was served", lds.VersionInfo, v1)
		}
		st.ack(lds)
		if err := s.LastError(); err != nil {
			t.Errorf("LastError = %v after a valid edit", err)
		}
	})
}

func TestFileRemoved(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openSotW(t, dial(t, s.addr, nil))
	st.subscribe(listenerType)
	st.ack(st.next(listenerType))
	v := s.Version()

	if err := os.Remove(s.path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "LastError", func() bool { return s.LastError() != nil })
	if err := s.LastError(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LastError = %v, want a not-exist error", err)
	}
	st.none()
	if s.Version() != v {
		t.Errorf("version %s → %s with the file removed", v, s.Version())
	}
	if n := strings.Count(s.logs.String(), "mesh file unreadable"); n != 1 {
		t.Errorf("%d error lines for a removal, want 1:\n%s", n, s.logs)
	}

	// Back with the same content: nothing to push, nothing wrong.
	writeFile(t, s.path, meshFile)
	eventually(t, "LastError cleared", func() bool { return s.LastError() == nil })
	st.none()
}

func TestDelta(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openDelta(t, dial(t, s.addr, nil))

	// Wildcard subscriptions: no names in the first request.
	st.send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: listenerType})
	lds := st.next(listenerType)
	sameNames(t, "listeners", deltaNames(t, lds), "demo/web:80", "demo/dns:53/udp")
	if lds.SystemVersionInfo != s.Version() {
		t.Errorf("system version %q, server version %q", lds.SystemVersionInfo, s.Version())
	}
	st.ack(lds)
	st.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: clusterType})
	cds := st.next(clusterType)
	sameNames(t, "clusters", deltaNames(t, cds), claNames...)
	st.ack(cds)
	st.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: endpointType, ResourceNamesSubscribe: claNames})
	eds := st.next(endpointType)
	sameNames(t, "assignments", deltaNames(t, eds), claNames...)
	st.ack(eds)
	edsVersions := deltaVersions(eds)
	ldsVersions := deltaVersions(lds)
	for name, v := range edsVersions {
		if v == "" {
			t.Errorf("assignment %s has no version", name)
		}
	}
	st.none()

	t.Run("endpoint edit", func(t *testing.T) {
		// Only web's assignment changes: only it is sent, with a new
		// version; dns's keeps its version, listeners and clusters are not
		// sent at all.
		writeFile(t, s.path, strings.Replace(meshFile, "weight: 3", "weight: 5", 1))
		eds := st.next(endpointType)
		sameNames(t, "changed assignments", deltaNames(t, eds), "demo/web:80")
		if v := eds.Resources[0].Version; v == edsVersions["demo/web:80"] || v == "" {
			t.Errorf("web's assignment version %q, was %q", v, edsVersions["demo/web:80"])
		}
		if len(eds.RemovedResources) != 0 {
			t.Errorf("removed %q", eds.RemovedResources)
		}
		st.ack(eds)
		st.none()

		// A client arriving now sees dns's assignment at the version it had
		// before the edit.
		fresh := openDelta(t, dial(t, s.addr, nil))
		fresh.send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: endpointType, ResourceNamesSubscribe: claNames})
		now := deltaVersions(fresh.next(endpointType))
		if now["demo/dns:53/udp"] != edsVersions["demo/dns:53/udp"] {
			t.Errorf("dns's assignment version %q, was %q before an edit of web", now["demo/dns:53/udp"], edsVersions["demo/dns:53/udp"])
		}
		if now["demo/web:80"] == edsVersions["demo/web:80"] {
			t.Errorf("web's assignment kept version %q across its edit", now["demo/web:80"])
		}
	})

	t.Run("service added and removed", func(t *testing.T) {
		writeFile(t, s.path, strings.Replace(meshFile, "weight: 3", "weight: 5", 1)+apiService)
		lds := st.next(listenerType)
		sameNames(t, "new listeners", deltaNames(t, lds), "demo/api:443")
		st.ack(lds)
		st.ack(st.next(clusterType))
		st.none() // not subscribed to the new assignment by name

		writeFile(t, s.path, meshFile)
		lds = st.next(listenerType)
		if len(lds.Resources) != 0 || !slices.Equal(lds.RemovedResources, []string{"demo/api:443"}) {
			t.Errorf("LDS sent %q and removed %q; want demo/api:443 removed only", deltaNames(t, lds), lds.RemovedResources)
		}
		st.ack(lds)
		st.ack(st.next(clusterType))
		eds := st.next(endpointType)
		sameNames(t, "assignments back", deltaNames(t, eds), "demo/web:80")
		if eds.Resources[0].Version != edsVersions["demo/web:80"] {
			t.Errorf("web's assignment version %q, want %q as before the edits", eds.Resources[0].Version, edsVersions["demo/web:80"])
		}
		st.ack(eds)
	})

	// A new delta client that already holds some resources at their
	// current version is sent only what it lacks.
	t.Run("initial versions", func(t *testing.T) {
		st := openDelta(t, dial(t, s.addr, nil))
		st.send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: listenerType,
			InitialResourceVersions: map[string]string{"demo/web:80": ldsVersions["demo/web:80"]}})
		sameNames(t, "listeners", deltaNames(t, st.next(listenerType)), "demo/dns:53/udp")
	})
}

// A state-of-the-world NACK carries the version last accepted; the
// control plane must not answer it with the rejected snapshot again.
func TestSotWNACKIsNotRepeated(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openSotW(t, dial(t, s.addr, nil))
	st.subscribe(listenerType)
	lds := st.next(listenerType)
	st.send(&discoverygrpc.DiscoveryRequest{TypeUrl: listenerType, VersionInfo: "", ResponseNonce: lds.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: `Listener "demo/web:80": address: unsupported`}})
	st.none()
	if !strings.Contains(s.logs.String(), "xds client rejected resources") {
		t.Errorf("NACK not logged:\n%s", s.logs)
	}

	// The next version is sent.
	writeFile(t, s.path, meshFile+apiService)
	lds2 := st.next(listenerType)
	if lds2.VersionInfo == lds.VersionInfo {
		t.Errorf("version %s sent again", lds2.VersionInfo)
	}
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	writeFile(t, path, meshFile)
	lis, err := net.Listen("unix", filepath.Join(dir, "xds.sock"))
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, path, lis, controlplane.Options{})
	st := openSotW(t, dial(t, "unix://"+s.addr, nil))
	st.subscribe(clusterType)
	sameNames(t, "clusters", names(t, st.next(clusterType).Resources), claNames...)
}

// Serve ends open streams when its context ends, and returns nil.
func TestServeEndsStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, meshFile)
	s, err := controlplane.New(controlplane.Options{ConfigPath: path, PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	st := openSotW(t, dial(t, lis.Addr().String(), nil))
	st.subscribe(listenerType)
	st.next(listenerType)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(patience):
		t.Fatal("Serve did not return")
	}
	select {
	case <-st.err:
	case <-time.After(patience):
		t.Fatal("client stream still open after Serve returned")
	}
}

// The file is not read again while it cannot have changed; an edit in
// place that keeps the file's size is still served, as is one that renames
// a file with an older time of modification over it.
func TestUnchangedFileEdits(t *testing.T) {
	s := start(t, meshFile, controlplane.Options{})
	st := openSotW(t, dial(t, s.addr, nil))
	st.subscribe(listenerType)
	st.ack(st.next(listenerType))
	time.Sleep(1500 * time.Millisecond) // the file is older than a second: polls stop reading it

	// In place: the same inode, the same length, another VIP.
	edited := strings.Replace(meshFile, "10.96.0.10", "10.96.0.20", 1)
	if err := os.WriteFile(s.path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	lds := st.next(listenerType)
	served := false
	for _, a := range lds.Resources {
		served = served || strings.Contains(string(a.GetValue()), "10.96.0.20")
	}
	if !served {
		t.Errorf("in-place edit not served: no listener has VIP 10.96.0.20 (version %s)", lds.VersionInfo)
	}
	st.ack(lds)

	// Renamed over it with a time of modification an hour old.
	time.Sleep(1500 * time.Millisecond)
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(meshFile+apiService), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		t.Fatal(err)
	}
	lds = st.next(listenerType)
	sameNames(t, "listeners", names(t, lds.Resources), "demo/api:443", "demo/web:80", "demo/dns:53/udp")
}
