package l7_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// testService echoes; a request with a ResponseStatus fails with it,
// with a header and a trailer set, save for the message "trailers only":
// with no metadata, grpc-go sends such an error as trailers only.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
}

func fail(ctx context.Context, s *testgrpc.EchoStatus) error {
	if s.Message == "trailers only" {
		return status.Error(codes.Code(s.Code), s.Message)
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t"))
	return status.Error(codes.Code(s.Code), s.Message)
}

func (testService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if s := req.GetResponseStatus(); s.GetCode() != 0 {
		return nil, fail(ctx, s)
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (testService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
	for _, p := range req.GetResponseParameters() {
		body := make([]byte, p.GetSize())
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: body}}); err != nil {
			return err
		}
	}
	if s := req.GetResponseStatus(); s.GetCode() != 0 {
		return fail(stream.Context(), s)
	}
	return nil
}

func (testService) StreamingInputCall(stream grpc.ClientStreamingServer[testgrpc.StreamingInputCallRequest, testgrpc.StreamingInputCallResponse]) error {
	var n int32
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		n += int32(len(req.GetPayload().GetBody()))
	}
}

func (testService) FullDuplexCall(stream grpc.BidiStreamingServer[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// startTestService serves the gRPC test service on loopback until the
// test ends, and returns its address.
func startTestService(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, testService{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// grpcFixture is a gRPC test service behind the proxy, and a client of it.
func grpcFixture(t *testing.T) (*fixture, testgrpc.TestServiceClient) {
	addr := startTestService(t)

	// UnimplementedCall goes to a cluster without endpoints.
	nowhere := route("nowhere", prefix("/grpc.testing.TestService/UnimplementedCall"))
	f := start(t, l7.Options{}, service(
		[]model.HTTPRoute{nowhere, route("grpc", prefix("/grpc.testing.TestService/"))},
		protoCluster("grpc", model.UpstreamHTTP2, endpoint(t, addr)), cluster("nowhere")))
	return f, grpcClient(t, f)
}

// grpcClient returns a gRPC client of the proxy, closed at the test's end.
func grpcClient(t *testing.T, f *fixture) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func TestGRPC(t *testing.T) {
	f, client := grpcFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := 0 // of the subtests that run
	run := func(name string, test func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			calls++
			test(t)
		})
	}

	run("unary", func(t *testing.T) {
		res, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("hi")}})
		if err != nil || string(res.GetPayload().GetBody()) != "hi" {
			t.Errorf("got %v, %v", res, err)
		}
	})

	run("server streaming", func(t *testing.T) {
		stream, err := client.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{
			ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}, {Size: 100 << 10}, {Size: 3}},
		})
		if err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for {
			res, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(res.GetPayload().GetBody()))
		}
		if len(sizes) != 3 || sizes[0] != 1 || sizes[1] != 100<<10 || sizes[2] != 3 {
			t.Errorf("got messages of %v bytes", sizes)
		}
	})

	run("client streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{10, 20000, 30} {
			if err := stream.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, n)}}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := stream.CloseAndRecv()
		if err != nil || res.GetAggregatedPayloadSize() != 20040 {
			t.Errorf("got %v, %v; want 20040", res, err)
		}
	})

	// Each message is answered before the next is sent: both directions
	// stream through the proxy, nothing waits for the end of the other.
	run("bidi", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range []string{"one", "two", "three"} {
			if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
				t.Fatal(err)
			}
			res, err := stream.Recv()
			if err != nil || string(res.GetPayload().GetBody()) != msg {
				t.Fatalf("sent %q, got %v, %v", msg, res, err)
			}
		}
		stream.CloseSend()
		if _, err := stream.Recv(); err != io.EOF {
			t.Errorf("end of stream: %v", err)
		}
	})

	// A status sent as trailers only (the error comes before any message).
	run("error", func(t *testing.T) {
		var header, trailer metadata.MD
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}},
			grpc.Header(&header), grpc.Trailer(&trailer))
		if s := status.Convert(err); s.Code() != codes.NotFound || s.Message() != "no such thing" {
			t.Errorf("got %v, want NotFound: no such thing", err)
		}
		if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "t" {
			t.Errorf("trailer %v", trailer)
		}
		if got := header.Get("x-header"); len(got) != 1 || got[0] != "h" {
			t.Errorf("header %v", header)
		}
	})

	// A status in trailers after messages.
	run("error after messages", func(t *testing.T) {
		var trailer metadata.MD
		stream, err := client.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{
			ResponseParameters: []*testgrpc.ResponseParameters{{Size: 5}, {Size: 6}},
			ResponseStatus:     &testgrpc.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "enough"},
		}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err = stream.Recv()
			if err != nil {
				break
			}
			n++
		}
		if s := status.Convert(err); n != 2 || s.Code() != codes.ResourceExhausted || s.Message() != "enough" {
			t.Errorf("got %d messages, then %v; want 2, then ResourceExhausted: enough", n, err)
		}
		if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "t" {
			t.Errorf("trailer %v", trailer)
		}
	})

	// The proxy's own answers come as gRPC statuses.
	run("local reply", func(t *testing.T) {
		_, err := client.UnimplementedCall(ctx, &testgrpc.Empty{})
		if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "sluice: no healthy upstream in cluster nowhere" {
			t.Errorf("got %v, want Unavailable from the proxy", err)
		}
	})

	// Each call's record has the grpc-status its client got: from the
	// upstream's trailers, its trailers-only answer, or the proxy's own.
	var statuses []string
	for _, r := range f.waitRecords(calls) {
		if r.Proto != "HTTP/2.0" || !r.GRPC || r.Tries > 1 || !strings.HasPrefix(r.Path, "/grpc.testing.TestService/") {
			t.Errorf("record %+v", r)
		}
		statuses = append(statuses, strings.TrimPrefix(r.Path, "/grpc.testing.TestService/")+" "+r.GRPCStatus)
	}
	slices.Sort(statuses)
	want := []string{"FullDuplexCall 0", "StreamingInputCall 0", "StreamingOutputCall 0", "StreamingOutputCall 8",
		"UnaryCall 0", "UnaryCall 5", "UnimplementedCall 14"}
	if calls == len(want) && !slices.Equal(statuses, want) {
		t.Errorf("records' methods and grpc-status: %q, want %q", statuses, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range f.identities {
		if id != clientIdentity {
			t.Errorf("upstream dialed with identity %d, want %d", id, clientIdentity)
		}
	}
	if len(f.identities) == 0 {
		t.Error("no upstream dial")
	}
}

// TestGRPCTimeout answers a gRPC request the upstream does not answer in
// time with DEADLINE_EXCEEDED.
func TestGRPCTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		<-stream.Context().Done()
		return errors.New("canceled")
	}))
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	rt := route("grpc", prefix("/"))
	rt.Action.Timeout = 100 * time.Millisecond
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, protoCluster("grpc", model.UpstreamHTTP2, endpoint(t, l.Addr().String()))))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = grpcClient(t, f).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if s := status.Convert(err); s.Code() != codes.DeadlineExceeded || s.Message() != "sluice: upstream timeout" {
		t.Errorf("got %v, want DeadlineExceeded from the proxy", err)
	}
	if r := f.waitRecords(1)[0]; r.Code != 504 || r.GRPCStatus != "4" {
		t.Errorf("record code %d, grpc-status %q; want 504, 4", r.Code, r.GRPCStatus)
	}
}

// TestGRPCTrailersOnly checks on the wire that a gRPC error sent as
// trailers only (one HEADERS frame that ends the stream) reaches the
// client in that form, which gRPC clients other than grpc-go insist on.
func TestGRPCTrailersOnly(t *testing.T) {
	f, _ := grpcFixture(t)
	fr := dialH2(t, f)
	msg, err := proto.Marshal(&testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "trailers only"}})
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	for i, id := range []uint32{1, 3, 5} {
		writeH2Request(t, fr, id, append(body, msg...), ":method", "POST", ":scheme", "http", ":authority", "web.shop",
			":path", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "trailers")
		res := readH2Response(t, fr, id)
		if !res.headerEnded || res.field(res.header, "grpc-status") != "5" || res.field(res.header, "grpc-message") != "trailers only" {
			t.Errorf("request %d: headers %v (ending the stream: %v), body %d bytes, trailers %v; want trailers only with grpc-status 5",
				i, res.header, res.headerEnded, res.body.Len(), res.trailer)
		}
	}
}

// TestGRPCToHTTP1Cluster sends gRPC to a cluster left at the default
// upstream protocol, HTTP/1.1, whose backend speaks gRPC (HTTP/2 only):
// the request goes over HTTP/1.1, as Envoy would send it, the backend
// refuses it, and the client gets the proxy's UNAVAILABLE.
func TestGRPCToHTTP1Cluster(t *testing.T) {
	addr := startTestService(t)
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("grpc", prefix("/"))}, cluster("grpc", endpoint(t, addr))))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := grpcClient(t, f).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "sluice: upstream reset before response headers" {
		t.Errorf("got %v, want Unavailable from the proxy", err)
	}
	if r := f.waitRecords(1)[0]; r.Code != 502 || r.Proto != "HTTP/2.0" {
		t.Errorf("record: code %d over %s, want 502 over HTTP/2.0", r.Code, r.Proto)
	}
}
