// Command etcd is etcd's own server entry point (go.etcd.io/etcd/server/v3/etcdmain),
// built at the exact version k8s.io/kubernetes requires, so no etcd download is needed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
