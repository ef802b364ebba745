/*
 * A Go-like TCP client for the upgrade tests: statically linked, and every network call is a
 * raw system call (syscall(2)), as Go's runtime makes them, so an LD_PRELOAD shim such as
 * mptcpize never sees it. Like Go's net package it asks for
 * socket(family, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0) and connects without blocking.
 *
 * usage: go-like-client ADDR PORT MESSAGE
 * Prints "protocol=<SO_PROTOCOL> nonblock=<0|1> cloexec=<0|1>", sends MESSAGE, then prints
 * "reply=<what the server sent before closing>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int wait_for(long fd, short events)
{
	struct pollfd p = { .fd = (int)fd, .events = events };
	return syscall(SYS_poll, &p, 1, 30000) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };
	struct sockaddr *sa;
	socklen_t salen;
	int family;

	if (argc != 4) {
		fprintf(stderr, "usage: %s ADDR PORT MESSAGE\n", argv[0]);
		return 2;
	}
	if (inet_pton(AF_INET6, argv[1], &v6.sin6_addr) == 1) {
		family = AF_INET6;
		v6.sin6_port = htons(atoi(argv[2]));
		sa = (struct sockaddr *)&v6;
		salen = sizeof(v6);
	} else if (inet_pton(AF_INET, argv[1], &v4.sin_addr) == 1) {
		family = AF_INET;
		v4.sin_port = htons(atoi(argv[2]));
		sa = (struct sockaddr *)&v4;
		salen = sizeof(v4);
	} else {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	long fd = syscall(SYS_socket, family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	int proto = -1, err = 0;
	socklen_t len = sizeof(proto);
	syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len);
	long fl = syscall(SYS_fcntl, fd, F_GETFL), fdfl = syscall(SYS_fcntl, fd, F_GETFD);
	printf("protocol=%d nonblock=%d cloexec=%d\n", proto, !!(fl & O_NONBLOCK),
	       !!(fdfl & FD_CLOEXEC));
	fflush(stdout);
	if (syscall(SYS_connect, fd, sa, salen) < 0 && errno != EINPROGRESS) {
		perror("connect");
		return 1;
	}
	len = sizeof(err);
	if (wait_for(fd, POLLOUT) || syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_ERROR, &err, &len) ||
	    err) {
		fprintf(stderr, "connect: %s\n", strerror(err ? err : ETIMEDOUT));
		return 1;
	}
	size_t n = strlen(argv[3]);
	if (syscall(SYS_write, fd, argv[3], n) != (long)n) {
		perror("write");
		return 1;
	}
	char reply[256];
	size_t got = 0;
	for (;;) {
		if (wait_for(fd, POLLIN)) {
			fprintf(stderr, "no reply\n");
			return 1;
		}
		long r = syscall(SYS_read, fd, reply + got, sizeof(reply) - 1 - got);
		if (r < 0 && errno == EAGAIN)
			continue;
		if (r <= 0)
			break;
		got += r;
	}
	reply[got] = 0;
	printf("reply=%s\n", reply);
	return 0;
}
