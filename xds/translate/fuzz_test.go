package translate_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/xds/translate"
)

// Fuzz input format: a sequence of parts, each a kind byte (0 Listener,
// 1 Cluster, 2 ClusterLoadAssignment, 3 RouteConfiguration, taken modulo
// 4), a little-endian uint16 length, and that many bytes of the resource in
// protobuf wire format. A short last part takes what is left.

const (
	partListener = iota
	partCluster
	partAssignment
	partRoute
	partKinds
)

// encodeParts is the inverse of decodeParts, for seeds.
func encodeParts(r translate.Resources) []byte {
	var b []byte
	add := func(kind byte, m proto.Message) {
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			panic(err)
		}
		b = append(b, kind)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(raw)))
		b = append(b, raw...)
	}
	for _, k := range sortedNames(r.Listeners) {
		add(partListener, r.Listeners[k])
	}
	for _, k := range sortedNames(r.Clusters) {
		add(partCluster, r.Clusters[k])
	}
	for _, k := range sortedNames(r.Endpoints) {
		add(partAssignment, r.Endpoints[k])
	}
	for _, k := range sortedNames(r.Routes) {
		add(partRoute, r.Routes[k])
	}
	return b
}

func decodeParts(b []byte) translate.Resources {
	r := translate.Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Routes:    map[string]*routev3.RouteConfiguration{},
	}
	for len(b) >= 3 {
		kind := b[0] % partKinds
		n := int(binary.LittleEndian.Uint16(b[1:3]))
		b = b[3:]
		n = min(n, len(b))
		part := b[:n]
		b = b[n:]
		switch kind {
		case partListener:
			l := &listenerv3.Listener{}
			if proto.Unmarshal(part, l) == nil {
				r.Listeners[l.GetName()] = l
			}
		case partCluster:
			c := &clusterv3.Cluster{}
			if proto.Unmarshal(part, c) == nil {
				r.Clusters[c.GetName()] = c
			}
		case partAssignment:
			a := &endpointv3.ClusterLoadAssignment{}
			if proto.Unmarshal(part, a) == nil {
				r.Endpoints[a.GetClusterName()] = a
			}
		case partRoute:
			rc := &routev3.RouteConfiguration{}
			if proto.Unmarshal(part, rc) == nil {
				r.Routes[rc.GetName()] = rc
			}
		}
	}
	return r
}

func FuzzTranslate(f *testing.F) {
	// More seeds, made from real resources, are in testdata/fuzz/FuzzTranslate.
	f.Add(encodeParts(demo()))
	f.Add(encodeParts(l7Mesh()))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := decodeParts(b)
		translate.EDSNames(r)
		translate.RDSNames(r)
		got, err := translate.Translate(r)
		if err != nil {
			var re *translate.ResourceError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is a %T, not a *ResourceError", err, err)
			}
			return
		}
		if err := got.State.Validate(); err != nil {
			t.Fatalf("accepted a state that does not validate: %v", err)
		}
		again, err := translate.Translate(r)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("second Translate differs (err %v)", err)
		}
	})
}

// Mutation input format, for FuzzTranslator: a sequence of operations on
// a decoded set, each an op byte and its operand. The op's kind is op%4 (as
// in a part) and its action op/4%4: 0 upserts the resource that follows,
// encoded as in a part; 1 deletes, 2 replaces with a copy (same content, new
// pointer), 3 replaces with nil the resource whose index among the kind's
// sorted names is the next byte.

const (
	opUpsert = iota
	opDelete
	opCopy
	opNil
)

// mutate returns a copy of r changed by the operations in b. Resources it
// does not change keep their pointers.
func mutate(r translate.Resources, b []byte) translate.Resources {
	out := copyMaps(r)
	for len(b) >= 2 {
		kind, action := b[0]%partKinds, b[0]/partKinds%4
		if action == opUpsert {
			if len(b) < 3 {
				break
			}
			n := min(int(binary.LittleEndian.Uint16(b[1:3])), len(b)-3)
			part := append([]byte{kind}, b[1:3+n]...)
			binary.LittleEndian.PutUint16(part[1:], uint16(n))
			d := decodeParts(part)
			maps.Copy(out.Listeners, d.Listeners)
			maps.Copy(out.Clusters, d.Clusters)
			maps.Copy(out.Endpoints, d.Endpoints)
			maps.Copy(out.Routes, d.Routes)
			b = b[3+n:]
			continue
		}
		i := int(b[1])
		b = b[2:]
		switch kind {
		case partListener:
			change(out.Listeners, i, action)
		case partCluster:
			change(out.Clusters, i, action)
		case partAssignment:
			change(out.Endpoints, i, action)
		case partRoute:
			change(out.Routes, i, action)
		}
	}
	return out
}

func change[M proto.Message](m map[string]M, i int, action byte) {
	if len(m) == 0 {
		return
	}
	name := sortedNames(m)[i%len(m)]
	switch action {
	case opDelete:
		delete(m, name)
	case opCopy:
		m[name] = proto.Clone(m[name]).(M)
	case opNil:
		var zero M
		m[name] = zero
	}
}

// FuzzTranslator feeds one Translator a decoded set, the set changed, the
// first again and so on, and checks every answer against Translate's.
func FuzzTranslator(f *testing.F) {
	ops := [][]byte{
		nil,
		{partKinds*opCopy + partListener, 0, partKinds*opCopy + partCluster, 0, partKinds*opCopy + partAssignment, 0},
		{partKinds*opDelete + partAssignment, 0},
		{partKinds*opDelete + partCluster, 1, partKinds*opNil + partListener, 0},
		{partKinds*opCopy + partRoute, 0, partKinds*opDelete + partCluster, 0},
		{partKinds*opDelete + partRoute, 0},
	}
	seeds := [][]byte{encodeParts(demo()), encodeParts(l7Mesh())}
	for _, s := range seedCorpus(f) {
		seeds = append(seeds, s.input)
	}
	for _, seed := range seeds {
		for _, op := range ops {
			f.Add(seed, op)
		}
	}
	changed := demo()
	changed.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8080))
	f.Add(encodeParts(demo()), append([]byte{partKinds*opUpsert + partAssignment}, encodeParts(translate.Resources{Endpoints: changed.Endpoints})[1:]...))
	f.Fuzz(func(t *testing.T, base, ops []byte) {
		r := decodeParts(base)
		changed := mutate(r, ops)
		tr := translate.NewTranslator()
		for i, set := range []translate.Resources{r, changed, r, changed, changed, {}, changed} {
			sameAsTranslate(t, fmt.Sprint("set ", i), tr, set)
		}
	})
}

type seed struct {
	name  string
	input []byte
}

// seedCorpus returns the inputs in testdata/fuzz/FuzzTranslate.
func seedCorpus(t testing.TB) []seed {
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzTranslate", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no seed corpus: %v", err)
	}
	var seeds []seed
	for _, file := range files {
		name := filepath.Base(file)
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" {
			t.Fatalf("%s: not a one-value fuzz corpus file", name)
		}
		arg, ok := strings.CutPrefix(lines[1], "[]byte(")
		arg, ok2 := strings.CutSuffix(arg, ")")
		b, err := strconv.Unquote(arg)
		if !ok || !ok2 || err != nil {
			t.Fatalf("%s: cannot read %q", name, lines[1])
		}
		seeds = append(seeds, seed{name, []byte(b)})
	}
	return seeds
}

// TestSeedCorpus keeps the committed seeds meaningful: the valid-* ones
// translate and the invalid-* ones are refused (not merely undecodable).
func TestSeedCorpus(t *testing.T) {
	for _, s := range seedCorpus(t) {
		name := s.name
		r := decodeParts(s.input)
		if len(r.Listeners)+len(r.Clusters)+len(r.Endpoints)+len(r.Routes) == 0 {
			t.Errorf("%s: holds no resource", name)
		}
		_, err := translate.Translate(r)
		switch {
		case strings.HasPrefix(name, "valid-") && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case strings.HasPrefix(name, "invalid-") && err == nil:
			t.Errorf("%s: accepted", name)
		case err != nil:
			t.Logf("%s: %v", name, err)
		}
	}
}

func sortedNames[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
