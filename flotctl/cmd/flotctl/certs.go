package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/mtls/certs"
)

// newCertsCommand makes the certificates of a lab cluster.
func newCertsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make a small CA and the certificates of a lab cluster's services, admins and clients",
		Long: "Every TCP connection between Flotilla's services, and from clients, is mutual TLS against one CA.\n" +
			"A certificate's role (service, admin or client) is its subject's organizational unit: services\n" +
			"serve and dial each other, admins may also call what runs programs as root (snapshotd's\n" +
			"snapshotter administration), clients call containerd's API.",
	}
	dir := cmd.PersistentFlags().String("dir", ".", "directory of the CA (ca.pem, ca-key.pem) and the certificates")
	days := cmd.PersistentFlags().Int("days", 365, "days the certificate is valid")
	validity := func() time.Duration { return time.Duration(*days) * 24 * time.Hour }

	ca := &cobra.Command{
		Use:   "ca",
		Short: "Make the cluster CA in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("name")
			if err := certs.NewCA(*dir, name, validity()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA %q: %s/%s (keep %s/%s secret)\n", name, *dir, certs.CAFile, *dir, certs.CAKeyFile)
			return nil
		},
	}
	ca.Flags().String("name", "Flotilla lab CA", "the CA's common name")

	issue := &cobra.Command{
		Use:   "issue NAME",
		Short: "Sign a certificate for NAME with the CA in --dir (NAME.pem, NAME-key.pem)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			role, _ := cmd.Flags().GetString("role")
			hosts, _ := cmd.Flags().GetStringSlice("host")
			node, _ := cmd.Flags().GetString("node")
			if err := certs.Issue(*dir, certs.Request{Name: args[0], Role: role, Hosts: hosts, Node: node, Validity: validity()}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (role %s): %s %s\n", args[0], role,
				certs.CertFile(*dir, args[0]), certs.KeyFile(*dir, args[0]))
			return nil
		},
	}
	issue.Flags().String("role", mtls.RoleService, "service, admin or client")
	issue.Flags().StringSlice("host", nil, "IP address or DNS name a service is reached at (repeatable; required for services)")
	issue.Flags().String("node", "", "the node a service runs on (its --node): a gateway needs it to have calls it relays unpacked on its node")
	cmd.AddCommand(ca, issue)
	return cmd
}

// tlsFlags are flotctl's own mutual TLS identity, for a gateway or service
// on TCP.
type tlsFlags struct{ files mtls.Files }

func (t *tlsFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&t.files.CA, "tls-ca", os.Getenv("FLOTILLA_TLS_CA"), "cluster CA for TCP addresses ($FLOTILLA_TLS_CA)")
	cmd.PersistentFlags().StringVar(&t.files.Cert, "tls-cert", os.Getenv("FLOTILLA_TLS_CERT"), "client certificate for TCP addresses ($FLOTILLA_TLS_CERT)")
	cmd.PersistentFlags().StringVar(&t.files.Key, "tls-key", os.Getenv("FLOTILLA_TLS_KEY"), "key of --tls-cert ($FLOTILLA_TLS_KEY)")
}

// use makes the identity the one every connection of flotctl presents.
func (t *tlsFlags) use() error {
	id, err := mtls.Load(t.files)
	if err != nil {
		return err
	}
	dial.SetIdentity(id)
	return nil
}
