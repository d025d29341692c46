#!/bin/sh
# A simulated node of a cluster: a network namespace with a mount namespace
# of its own (its own bpffs pins, /run/netlab and /run/netns, so the
# namespaces made on the node go when it stops), as a machine would have.
#
#   node.sh start NAME      make node NAME (network namespace node-NAME)
#   node.sh NAME CMD...     run CMD on node NAME
#   node.sh stop NAME       end node NAME (run `netlab down` in it first)
#
# The mount namespace is held by a `sleep` whose pid is kept in
# /run/netlab-nodes/NAME.pid; only that pid is ever signalled.
set -eu
dir=/run/netlab-nodes
case "${1:-}" in
start)
    name=$2
    mkdir -p "$dir"
    ip netns add "node-$name"
    ip -n "node-$name" link set lo up
    unshare --mount --propagation private sh -c \
        'mount -t bpf bpf /sys/fs/bpf && mkdir -p /run/netlab &&
         mount -t tmpfs node /run/netlab && mount -t tmpfs node /run/netns &&
         exec sleep infinity' &
    echo $! >"$dir/$name.pid"
    sleep 0.2
    ;;
stop)
    name=$2
    kill "$(cat "$dir/$name.pid")"
    rm -f "$dir/$name.pid"
    ip netns del "node-$name"
    ;;
*)
    name=$1
    shift
    exec nsenter -t "$(cat "$dir/$name.pid")" -m --net="/run/netns/node-$name" --wd="$PWD" -- "$@"
    ;;
esac
