package stack

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	servicev1 "github.com/flotilla/flotilla/proto/service/v1"
)

// Status asks the gateway on socket for the state of every service it fronts.
func Status(ctx context.Context, socket string) (*gatewayv1.StackStatusResponse, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := gatewayv1.NewStackClient(conn).Status(ctx, &gatewayv1.StackStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("gateway at %s: %w", socket, err)
	}
	return resp, nil
}

// LocalStatus asks each daemon of layout l on this node for its health and
// info directly, for when the gateway itself is down.
func LocalStatus(ctx context.Context, l Layout) *gatewayv1.StackStatusResponse {
	resp := &gatewayv1.StackStatusResponse{}
	for _, s := range l.Services() {
		st := &gatewayv1.ServiceStatus{Name: s.Name, Address: s.Socket, Health: "UNREACHABLE"}
		if h, err := Health(ctx, s.Socket); err != nil {
			st.Error = status.Convert(err).Message()
			if status.Code(err) == codes.Unavailable {
				st.Error = "not answering on its socket"
			}
		} else {
			st.Health = h.String()
			st.Info, _ = info(ctx, s.Socket)
		}
		resp.Services = append(resp.Services, st)
	}
	return resp
}

func info(ctx context.Context, socket string) (*servicev1.GetInfoResponse, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return servicev1.NewInfoClient(conn).Get(ctx, &servicev1.GetInfoRequest{})
}

// PrintStatus writes one line per service: name, address, health, version,
// pid and metrics address; then, when the gateway reads a service registry,
// one line per instance on every node.
func PrintStatus(w io.Writer, resp *gatewayv1.StackStatusResponse) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tADDRESS\tHEALTH\tVERSION\tPID\tMETRICS\tSERVES")
	for _, s := range resp.GetServices() {
		version, pid, metrics := describe(s.GetInfo())
		health := s.GetHealth()
		if s.GetError() != "" {
			health += ": " + s.GetError()
		}
		serves := strings.Join(s.GetServices(), ",")
		if serves == "" {
			serves = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.GetName(), s.GetAddress(), health, version, pid, metrics, serves)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(resp.GetCluster()) == 0 && resp.GetClusterError() == "" {
		return nil
	}
	// The whole cluster, as the service registry lists it.
	fmt.Fprintln(w, "\nCLUSTER (service registry)")
	if e := resp.GetClusterError(); e != "" {
		fmt.Fprintf(w, "registry not read: %s\n", e)
	}
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSERVICE\tADDRESS\tHEALTH\tVERSION\tPID\tMETRICS")
	for _, s := range resp.GetCluster() {
		version, pid, metrics := describe(s.GetInfo())
		health := s.GetHealth()
		if s.GetError() != "" {
			health += ": " + s.GetError()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.GetNode(), s.GetName(), s.GetAddress(), health, version, pid, metrics)
	}
	return tw.Flush()
}

// describe gives a service's version, pid and metrics URL, "-" for what
// it does not say.
func describe(info *servicev1.GetInfoResponse) (version, pid, metrics string) {
	version, pid, metrics = "-", "-", "-"
	if info == nil {
		return
	}
	if v := info.GetVersion(); v != "" {
		version = v
		if r := info.GetRevision(); r != "" && r != "unknown" {
			version += " (" + shortRev(r) + ")"
		}
	}
	if info.GetPid() != 0 {
		pid = fmt.Sprint(info.GetPid())
	}
	if info.GetMetricsAddress() != "" {
		metrics = "http://" + info.GetMetricsAddress() + "/metrics"
	}
	return
}

func shortRev(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}
