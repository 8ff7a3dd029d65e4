/*
 * c_original -- the design of the board's C eoe_filter (EOE relay only),
 * rewritten from shared/spec/wire-format.md as the benchmark's baseline.
 *
 * Same shape as the original: one thread per direction, one read/recv and
 * one write/send per frame, 65557-byte buffers.  Without the original's
 * defects: the TAP is brought up with MTU = net MTU - 18, the socket
 * ignores its own outgoing frames, promiscuous mode is a packet-socket
 * membership (undone by the kernel when the socket closes), write errors
 * are counted instead of fatal, and the wire view of received frames is
 * rebuilt from PACKET_AUXDATA (the kernel moves the 802.1Q tag out of the
 * data) before the 22-byte header is stripped.
 *
 * usage: c_original -n NETIF -t TAPNAME [-F]
 * Prints "ready" once the TAP is up and both threads run; on SIGTERM or
 * SIGINT prints per-direction counters and exits 0.
 *
 * build: cc -O2 -pthread -Wall -Wextra -o c_original c_original.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux >= 4.20 */
#endif

#define BUF_SIZE 65557   /* 65535-byte inner frame + 22-byte header */
#define HDR_LEN 22
#define MIN_WIRE 36      /* header + an inner Ethernet header */
#define MIN_INNER 64     /* encapsulation pads inner frames to this */
#define MAX_INNER 65531  /* the 16-bit length field holds 4 + inner */
#define VLAN_LEN 4

/* Default EOE header up to the length field (wire order). */
static const unsigned char eoe_prefix[16] = {
    0x06, 0x00, 0x00, 0x00, 0x00, 0xf8, /* dst: the switch side */
    0x06, 0x00, 0x00, 0x00, 0x00, 0x78, /* src: board CPU, core 0 */
    0x81, 0x00,                         /* TPID */
    0x0f, 0xfe,                         /* TCI: PCP 0, VID 4094 */
};

struct counters {
    atomic_ulong rx, fwd, dropped, write_err, read_err;
};

static struct counters n2t, t2n;
static int net_fd = -1, tap_fd = -1;
static pthread_barrier_t started;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void count(atomic_ulong *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static unsigned long get(atomic_ulong *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Read errors are counted; the pause keeps a persistent one (a deleted
 * device) from spinning a core. */
static void read_error(struct counters *c)
{
    count(&c->read_err);
    usleep(1000);
}

/*
 * The spec's -F filter, written for the socket's view of the frame: when
 * the kernel has moved the outer tag into metadata every wire offset is
 * 4 bytes smaller.  Accept (whole frame) when the op_code nibble of wire
 * byte 18 is 1 and the be16 at wire offset 38 is not 0x08ab.
 */
static void attach_filter(int fd)
{
    static struct sock_filter code[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 0),
        /* tag in metadata: wire offsets - 4 */
        /* 2 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 18 - VLAN_LEN),
        /* 3 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x10, 0, 8),
        /* 5 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 38 - VLAN_LEN),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x08ab, 6, 5),
        /* tag (if any) still in the data: wire offsets */
        /* 7 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 18),
        /* 8 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x10, 0, 3),
        /* 10 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 38),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x08ab, 1, 0),
        /* 12 */ BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };

    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0)
        die("SO_ATTACH_FILTER");
}

static int open_net(const char *ifname, int filter)
{
    struct ifreq ifr;
    struct sockaddr_ll sll;
    struct packet_mreq mreq;
    int one = 1;
    /* Protocol 0: nothing is queued before the filter and bind are in place. */
    int fd = socket(AF_PACKET, SOCK_RAW, 0);

    if (fd < 0)
        die("socket(AF_PACKET)");
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
        die(ifname);
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0)
        die("PACKET_IGNORE_OUTGOING");
    if (setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)) < 0)
        die("PACKET_AUXDATA");
    if (filter)
        attach_filter(fd);
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifr.ifr_ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        die("bind");
    memset(&mreq, 0, sizeof(mreq));
    mreq.mr_ifindex = ifr.ifr_ifindex;
    mreq.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0)
        die("PACKET_ADD_MEMBERSHIP");
    return fd;
}

/* Create the TAP, give it MTU = net MTU - 18 and bring it up, through an
 * AF_INET socket: the tun fd does not take interface ioctls. */
static int open_tap(const char *tapname, const char *netname)
{
    struct ifreq ifr;
    int ctl, fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);

    if (fd < 0)
        die("/dev/net/tun");
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", tapname);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        die("TUNSETIFF");

    ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl < 0)
        die("socket(AF_INET)");
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", netname);
    if (ioctl(ctl, SIOCGIFMTU, &ifr) < 0)
        die("SIOCGIFMTU");
    ifr.ifr_mtu -= 18;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", tapname);
    if (ioctl(ctl, SIOCSIFMTU, &ifr) < 0)
        die("SIOCSIFMTU");
    if (ioctl(ctl, SIOCGIFFLAGS, &ifr) < 0)
        die("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(ctl, SIOCSIFFLAGS, &ifr) < 0)
        die("SIOCSIFFLAGS");
    close(ctl);
    return fd;
}

/* net -> TAP: rebuild the wire view, strip the 22-byte header. */
static void *net_to_tap(void *arg)
{
    unsigned char *buf = malloc(BUF_SIZE);
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
    } ctl;
    /* Receive 4 bytes in, so a tag can be re-inserted by moving only the
     * 12 address bytes. */
    struct iovec iov = { buf + VLAN_LEN, BUF_SIZE - VLAN_LEN };
    struct msghdr msg;

    (void)arg;
    if (!buf)
        die("malloc");
    pthread_barrier_wait(&started);
    for (;;) {
        struct cmsghdr *c;
        unsigned char *frame = buf + VLAN_LEN;
        ssize_t n;
        size_t len;

        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = &ctl;
        msg.msg_controllen = sizeof(ctl);
        n = recvmsg(net_fd, &msg, MSG_TRUNC);
        if (n < 0) {
            if (errno != EINTR)
                read_error(&n2t);
            continue;
        }
        count(&n2t.rx);
        if (msg.msg_flags & MSG_TRUNC) {
            count(&n2t.dropped);
            continue;
        }
        len = (size_t)n;
        for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            struct tpacket_auxdata aux;

            if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA)
                continue;
            memcpy(&aux, CMSG_DATA(c), sizeof(aux));
            if (aux.tp_status & TP_STATUS_VLAN_VALID) {
                unsigned tpid = (aux.tp_status & TP_STATUS_VLAN_TPID_VALID)
                                    ? aux.tp_vlan_tpid : ETH_P_8021Q;

                frame = buf;
                memmove(frame, frame + VLAN_LEN, 12);
                frame[12] = tpid >> 8;
                frame[13] = tpid & 0xff;
                frame[14] = aux.tp_vlan_tci >> 8;
                frame[15] = aux.tp_vlan_tci & 0xff;
                len += VLAN_LEN;
            }
        }
        if (len < MIN_WIRE) {
            count(&n2t.dropped);
            continue;
        }
        if (write(tap_fd, frame + HDR_LEN, len - HDR_LEN) < 0) {
            count(&n2t.write_err);
            continue;
        }
        count(&n2t.fwd);
    }
    return NULL;
}

/* TAP -> net: pad to 64 bytes, prepend the default header. */
static void *tap_to_net(void *arg)
{
    unsigned char *buf = malloc(BUF_SIZE);

    (void)arg;
    if (!buf)
        die("malloc");
    memcpy(buf, eoe_prefix, sizeof(eoe_prefix));
    buf[18] = 0x80; /* op_code 8 (A2A switch), upstream, flag 0 */
    buf[19] = buf[20] = 0; /* itf */
    buf[21] = 0; /* protocol_id */
    pthread_barrier_wait(&started);
    for (;;) {
        ssize_t n = read(tap_fd, buf + HDR_LEN, BUF_SIZE - HDR_LEN);
        size_t len;

        if (n < 0) {
            if (errno != EINTR)
                read_error(&t2n);
            continue;
        }
        count(&t2n.rx);
        if (n > MAX_INNER) {
            count(&t2n.dropped);
            continue;
        }
        len = (size_t)n;
        if (len < MIN_INNER) {
            memset(buf + HDR_LEN + len, 0, MIN_INNER - len);
            len = MIN_INNER;
        }
        buf[16] = (len + 4) >> 8;
        buf[17] = (len + 4) & 0xff;
        if (send(net_fd, buf, HDR_LEN + len, 0) < 0) {
            count(&t2n.write_err);
            continue;
        }
        count(&t2n.fwd);
    }
    return NULL;
}

static void print_counters(const char *dir, struct counters *c)
{
    printf("%s rx=%lu fwd=%lu dropped=%lu write_err=%lu read_err=%lu\n", dir,
           get(&c->rx), get(&c->fwd), get(&c->dropped), get(&c->write_err),
           get(&c->read_err));
}

int main(int argc, char **argv)
{
    const char *netif = NULL, *tapname = NULL;
    int opt, filter = 0, sig;
    pthread_t t1, t2;
    sigset_t set;

    while ((opt = getopt(argc, argv, "n:t:F")) != -1) {
        switch (opt) {
        case 'n': netif = optarg; break;
        case 't': tapname = optarg; break;
        case 'F': filter = 1; break;
        default: netif = NULL; optind = argc; break;
        }
    }
    if (!netif || !tapname || optind != argc) {
        fprintf(stderr, "usage: %s -n NETIF -t TAPNAME [-F]\n", argv[0]);
        return 2;
    }

    /* Signals go to sigwait() in main only; the workers inherit the mask. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
        die("pthread_sigmask");

    net_fd = open_net(netif, filter);
    tap_fd = open_tap(tapname, netif);

    pthread_barrier_init(&started, NULL, 3);
    if (pthread_create(&t1, NULL, net_to_tap, NULL) != 0 ||
        pthread_create(&t2, NULL, tap_to_net, NULL) != 0)
        die("pthread_create");
    pthread_barrier_wait(&started);
    puts("ready");
    fflush(stdout);

    if (sigwait(&set, &sig) != 0)
        die("sigwait");
    print_counters("net_to_tap", &n2t);
    print_counters("tap_to_net", &t2n);
    fflush(stdout);
    return 0;
}
