package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcService is the http role's gRPC service (grpc.testing.TestService):
// it echoes, names the server in a "x-server" header, and fails a call
// that asks for a status with it, a "x-trailer" trailer set.
type grpcService struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (s *grpcService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-server", s.name))
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "failed"))
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (s *grpcService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
	for _, p := range req.GetResponseParameters() {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

// FullDuplexCall answers each message as it comes, with its payload.
func (s *grpcService) FullDuplexCall(stream grpc.BidiStreamingServer[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse]) error {
	_ = stream.SendHeader(metadata.Pairs("x-server", s.name))
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			stream.SetTrailer(metadata.Pairs("x-trailer", "done"))
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

func newGRPCServer(name string) *grpc.Server {
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, &grpcService{name: name})
	return s
}

// GRPCResult is what the grpc-client role reports, as JSON.
type GRPCResult struct {
	Server   string `json:"server"`    // x-server of the calls
	Unary    int    `json:"unary"`     // unary calls answered with their payload
	Duplex   int    `json:"duplex"`    // messages echoed on one bidirectional stream
	Streamed int    `json:"streamed"`  // messages of a server stream
	Trailer  string `json:"trailer"`   // x-trailer at the end of the bidirectional stream
	Status   string `json:"status"`    // the code and message of a call that asked to fail
	FailedTr string `json:"failed_tr"` // x-trailer of that call
}

// grpcClientRole calls the http role's gRPC service at DialEnv over one
// connection: unary calls, a bidirectional stream of ping-pongs, a server
// stream, and a call that fails with a status and trailer. It prints a
// GRPCResult, or an error and exits 1.
func grpcClientRole() int {
	r, err := grpcCalls(os.Getenv(DialEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

func grpcCalls(target string) (GRPCResult, error) {
	var r GRPCResult
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return r, err
	}
	defer conn.Close()
	c := testgrpc.NewTestServiceClient(conn)
	for i := range 5 {
		body := []byte(fmt.Sprintf("unary %d", i))
		var h metadata.MD
		res, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}}, grpc.Header(&h))
		if err != nil {
			return r, fmt.Errorf("unary call %d: %w", i, err)
		}
		if string(res.GetPayload().GetBody()) == string(body) {
			r.Unary++
		}
		r.Server = strings.Join(h.Get("x-server"), ",")
	}

	duplex, err := c.FullDuplexCall(ctx)
	if err != nil {
		return r, fmt.Errorf("full duplex call: %w", err)
	}
	for i := range 10 {
		body := []byte(fmt.Sprintf("ping %d", i))
		if err := duplex.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: body}}); err != nil {
			return r, fmt.Errorf("duplex send %d: %w", i, err)
		}
		// The answer comes before the next message is sent: the stream
		// flows both ways at once.
		res, err := duplex.Recv()
		if err != nil {
			return r, fmt.Errorf("duplex receive %d: %w", i, err)
		}
		if string(res.GetPayload().GetBody()) == string(body) {
			r.Duplex++
		}
	}
	if err := duplex.CloseSend(); err != nil {
		return r, err
	}
	if _, err := duplex.Recv(); !errors.Is(err, io.EOF) {
		return r, fmt.Errorf("duplex end: %v, want EOF", err)
	}
	r.Trailer = strings.Join(duplex.Trailer().Get("x-trailer"), ",")

	params := make([]*testgrpc.ResponseParameters, 5)
	for i := range params {
		params[i] = &testgrpc.ResponseParameters{Size: int32(1000 * (i + 1))}
	}
	stream, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		return r, fmt.Errorf("streaming output call: %w", err)
	}
	for {
		res, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return r, fmt.Errorf("stream receive: %w", err)
		}
		if len(res.GetPayload().GetBody()) == 1000*(r.Streamed+1) {
			r.Streamed++
		}
	}

	var tr metadata.MD
	_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no such item"}},
		grpc.Trailer(&tr))
	st := status.Convert(err)
	r.Status = st.Code().String() + ": " + st.Message()
	r.FailedTr = strings.Join(tr.Get("x-trailer"), ",")
	return r, nil
}
