// Command etcd is etcd v3.6.8 (the version k8s.io/kubernetes v1.36.3 requires),
// built from the Go module proxy inside this module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
