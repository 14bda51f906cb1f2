package translate_test

import (
	"reflect"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	tcpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/tcp/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

const httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// httpOptionsAt is where a cluster's HTTP protocol options are, as errors
// name it.
const httpOptionsAt = `typed_extension_protocol_options["` + httpOptionsKey + `"]`

// withHTTPOptions sets c's HTTP protocol options to o.
func withHTTPOptions(c *clusterv3.Cluster, o *httpupstreamv3.HttpProtocolOptions) {
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[httpOptionsKey] = mustAny(o)
}

func explicitHTTP1(o *corev3.Http1ProtocolOptions) *httpupstreamv3.HttpProtocolOptions {
	return &httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: o},
		},
	}}
}

func explicitHTTP2(o *corev3.Http2ProtocolOptions) *httpupstreamv3.HttpProtocolOptions {
	return &httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: o},
		},
	}}
}

func downstreamHTTP(d *httpupstreamv3.HttpProtocolOptions_UseDownstreamHttpConfig) *httpupstreamv3.HttpProtocolOptions {
	return &httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: d,
	}}
}

// TestUpstreamProtocol checks the upstream protocol an L7 service's
// cluster gets from the cluster's HTTP protocol options, new and
// deprecated, and what of them is counted as ignored.
func TestUpstreamProtocol(t *testing.T) {
	tests := []struct {
		name    string
		change  func(c *clusterv3.Cluster)
		want    model.UpstreamProtocol
		ignored map[string]int
	}{
		{"nothing said: HTTP/1.1", func(c *clusterv3.Cluster) {}, model.UpstreamHTTP1, nil},
		{"explicit HTTP/1.1", func(c *clusterv3.Cluster) {
			withHTTPOptions(c, explicitHTTP1(&corev3.Http1ProtocolOptions{EnableTrailers: true}))
		}, model.UpstreamHTTP1, map[string]int{"HttpProtocolOptions.http_protocol_options.enable_trailers": 1}},
		{"explicit HTTP/2", func(c *clusterv3.Cluster) {
			o := explicitHTTP2(&corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(100)})
			o.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(1)}
			withHTTPOptions(c, o)
		}, model.UpstreamHTTP2, map[string]int{
			"HttpProtocolOptions.http2_protocol_options.max_concurrent_streams": 1,
			"HttpProtocolOptions.common_http_protocol_options":                  1,
		}},
		{"explicit HTTP/2 without options", func(c *clusterv3.Cluster) {
			withHTTPOptions(c, explicitHTTP2(nil))
		}, model.UpstreamHTTP2, nil},
		{"the client's protocol", func(c *clusterv3.Cluster) {
			withHTTPOptions(c, downstreamHTTP(&httpupstreamv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				Http3ProtocolOptions: &corev3.Http3ProtocolOptions{},
			}))
		}, model.UpstreamUseDownstream, map[string]int{"HttpProtocolOptions.use_downstream_protocol_config.http3_protocol_options": 1}},
		{"the deprecated http2_protocol_options", func(c *clusterv3.Cluster) {
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{InitialStreamWindowSize: wrapperspb.UInt32(1 << 20)}
		}, model.UpstreamHTTP2, map[string]int{"Cluster.http2_protocol_options.initial_stream_window_size": 1}},
		{"the deprecated protocol_selection", func(c *clusterv3.Cluster) {
			c.ProtocolSelection = clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL
		}, model.UpstreamUseDownstream, nil},
		{"the deprecated fields, both protocols for the client's", func(c *clusterv3.Cluster) {
			c.ProtocolSelection = clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL
			c.HttpProtocolOptions = &corev3.Http1ProtocolOptions{}
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{}
		}, model.UpstreamUseDownstream, nil},
		{"HttpProtocolOptions make the deprecated fields moot", func(c *clusterv3.Cluster) {
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{}
			c.ProtocolSelection = clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL
			withHTTPOptions(c, explicitHTTP1(nil))
		}, model.UpstreamHTTP1, map[string]int{"Cluster.http2_protocol_options": 1, "Cluster.protocol_selection": 1}},
		{"options of another extension", func(c *clusterv3.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
				"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": mustAny(&tcpupstreamv3.TcpProtocolOptions{}),
			}
		}, model.UpstreamHTTP1, map[string]int{"Cluster.typed_extension_protocol_options": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := l7Mesh()
			tt.change(r.Clusters["api"])
			got, err := translate.Translate(r)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			want := apiCluster
			want.Protocol = tt.want
			if cl := got.State.Services[0].L7.Clusters; len(cl) != 2 || !reflect.DeepEqual(cl[0], want) || !reflect.DeepEqual(cl[1], webCluster) {
				t.Errorf("clusters %+v, want %+v and %+v", cl, want, webCluster)
			}
			for k, n := range tt.ignored {
				if got.Ignored[k] != n {
					t.Errorf("Ignored[%q] = %d, want %d (Ignored %v)", k, got.Ignored[k], n, got.Ignored)
				}
			}
			checkTranslator(t, r)
		})
	}
}

// TestUpstreamProtocolRefused checks that what the L7 proxy cannot honour
// in a cluster's HTTP protocol options is refused, naming the cluster and
// the field, whoever uses the cluster (here an L4 service).
func TestUpstreamProtocolRefused(t *testing.T) {
	opts := func(o *httpupstreamv3.HttpProtocolOptions) func(r *translate.Resources) {
		return changeCluster(func(c *clusterv3.Cluster) { withHTTPOptions(c, o) })
	}
	withOptions := func(o *httpupstreamv3.HttpProtocolOptions, f func(o *httpupstreamv3.HttpProtocolOptions)) *httpupstreamv3.HttpProtocolOptions {
		f(o)
		return o
	}
	explicitHTTP3 := &httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_Http3ProtocolOptions{Http3ProtocolOptions: &corev3.Http3ProtocolOptions{}},
		},
	}}
	runRefusals(t, []refusal{
		{"auto_config", opts(&httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_AutoConfig{
			AutoConfig: &httpupstreamv3.HttpProtocolOptions_AutoHttpConfig{},
		}}), "Cluster", "web", httpOptionsAt + ".auto_config", "choosing HTTP/1.1 or HTTP/2 by ALPN needs TLS"},
		{"HTTP/3", opts(explicitHTTP3),
			"Cluster", "web", httpOptionsAt + ".explicit_http_config.http3_protocol_options", "HTTP/3 is not supported"},
		{"no upstream protocol", opts(&httpupstreamv3.HttpProtocolOptions{}),
			"Cluster", "web", httpOptionsAt, "no upstream protocol; set explicit_http_config or use_downstream_protocol_config"},
		{"explicit_http_config without a protocol", opts(&httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig{},
		}}), "Cluster", "web", httpOptionsAt + ".explicit_http_config", "no protocol"},
		{"another type under the key", changeCluster(func(c *clusterv3.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpOptionsKey: mustAny(&corev3.Http2ProtocolOptions{})}
		}), "Cluster", "web", httpOptionsAt, "type envoy.config.core.v3.Http2ProtocolOptions; want " + httpOptionsKey},
		{"upgrades as extended CONNECT", opts(explicitHTTP2(&corev3.Http2ProtocolOptions{AllowConnect: true})),
			"Cluster", "web", httpOptionsAt + ".explicit_http_config.http2_protocol_options.allow_connect", "extended CONNECT is not supported"},
		{"METADATA frames for the client's protocol", opts(downstreamHTTP(&httpupstreamv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{AllowMetadata: true},
		})), "Cluster", "web", httpOptionsAt + ".use_downstream_protocol_config.http2_protocol_options.allow_metadata", "METADATA frames"},
		{"absolute URLs", opts(explicitHTTP1(&corev3.Http1ProtocolOptions{SendFullyQualifiedUrl: true})),
			"Cluster", "web", httpOptionsAt + ".explicit_http_config.http_protocol_options.send_fully_qualified_url", "absolute URLs"},
		{"a cluster's retry policy", opts(withOptions(explicitHTTP1(nil), func(o *httpupstreamv3.HttpProtocolOptions) {
			o.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}
		})), "Cluster", "web", httpOptionsAt + ".retry_policy", "set retry_policy on the route"},
		{"upstream HTTP filters", opts(withOptions(explicitHTTP1(nil), func(o *httpupstreamv3.HttpProtocolOptions) {
			o.HttpFilters = append(o.HttpFilters, routerFilter())
		})), "Cluster", "web", httpOptionsAt + ".http_filters", "upstream HTTP filters are not supported"},
		{"deprecated: extended CONNECT", changeCluster(func(c *clusterv3.Cluster) {
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{AllowConnect: true}
		}), "Cluster", "web", "http2_protocol_options.allow_connect", "extended CONNECT is not supported"},
		{"deprecated: both protocols for no client's", changeCluster(func(c *clusterv3.Cluster) {
			c.HttpProtocolOptions = &corev3.Http1ProtocolOptions{}
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{}
		}), "Cluster", "web", "http2_protocol_options", "set together with http_protocol_options"},
		{"deprecated: unknown protocol_selection", changeCluster(func(c *clusterv3.Cluster) {
			c.ProtocolSelection = 7
		}), "Cluster", "web", "protocol_selection", "unknown value 7"},
	})
}

// TestUpstreamProtocolErrorText checks the exact text operators see for
// the refusal most likely met, as docs/l7.md shows it.
func TestUpstreamProtocolErrorText(t *testing.T) {
	r := demo()
	withHTTPOptions(cluster(r), &httpupstreamv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_AutoConfig{
		AutoConfig: &httpupstreamv3.HttpProtocolOptions_AutoHttpConfig{},
	}})
	_, err := translate.Translate(r)
	want := `Cluster "web": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].auto_config: ` +
		`choosing HTTP/1.1 or HTTP/2 by ALPN needs TLS to the upstream, which Sluice does not originate; use explicit_http_config or use_downstream_protocol_config`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
}
