package rocketmqbench;

import com.alibaba.fastjson.JSON;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;

/**
 * The load of bench_replication.py on the official Java client, so that the broker's ingest limit
 * is measured with the producer RocketMQ users run, not with this project's code.
 *
 * <p>THREADS threads share one producer; each sends BATCH messages of SIZE bytes per request
 * (send(Collection), which the broker stores as separate messages, when BATCH > 1) and waits for
 * the answer: as fast as the broker answers when RATE is 0, else paced to RATE messages per second
 * in all. They send for WARMUP seconds (JIT, connections), then SECONDS timed. The producer spreads
 * requests over every queue of the topic on every master. Each message's key is PREFIX-thread-n:
 * the benchmark pairs a message with its replica by it. Prints one JSON line: messages
 * acknowledged (SEND_OK) in all and after the warm-up, the timed seconds, messages failed and
 * the first failure.
 */
public final class LoadProducer {
    public static void main(String[] args) throws Exception {
        if (args.length != 9) {
            System.err.println("usage: LoadProducer NAMESRV TOPIC THREADS BATCH WARMUP SECONDS RATE PREFIX SIZE");
            System.exit(2);
        }
        String namesrv = args[0];
        String topic = args[1];
        int threads = Integer.parseInt(args[2]);
        int batch = Integer.parseInt(args[3]);
        long warmup = (long) (Double.parseDouble(args[4]) * 1e9);
        long timed = (long) (Double.parseDouble(args[5]) * 1e9);
        double ratePerThread = Double.parseDouble(args[6]) / threads;
        String prefix = args[7];
        byte[] body = new byte[Integer.parseInt(args[8])];
        Arrays.fill(body, (byte) 'x');

        DefaultMQProducer producer = new DefaultMQProducer("PG_bench_" + prefix);
        producer.setNamesrvAddr(namesrv);
        producer.setInstanceName(prefix);
        producer.setSendMsgTimeout(10_000);
        producer.start();

        AtomicLong sent = new AtomicLong();
        AtomicLong sentTimed = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        AtomicReference<String> firstFailure = new AtomicReference<>("");
        long start = System.nanoTime();
        long timedFrom = start + warmup;
        long end = timedFrom + timed;
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            String keyPrefix = prefix + "-" + t + "-";
            Thread worker = new Thread(() -> {
                long n = 0;
                while (true) {
                    long now = System.nanoTime();
                    if (now >= end) {
                        return;
                    }
                    if (ratePerThread > 0) {
                        long due = start + (long) (n * 1e9 / ratePerThread);
                        if (due > now) {
                            sleep(Math.min(due, end) - now);
                            continue;
                        }
                    }
                    List<Message> messages = new ArrayList<>(batch);
                    for (int i = 0; i < batch; i++) {
                        messages.add(new Message(topic, "", keyPrefix + (n + i), body));
                    }
                    n += batch;
                    try {
                        SendResult result = batch == 1 ? producer.send(messages.get(0)) : producer.send(messages);
                        if (result.getSendStatus() != SendStatus.SEND_OK) {
                            failed.addAndGet(batch);
                            firstFailure.compareAndSet("", result.getSendStatus().toString());
                            continue;
                        }
                    } catch (Exception exc) {
                        failed.addAndGet(batch);
                        firstFailure.compareAndSet("", exc.toString());
                        continue;
                    }
                    sent.addAndGet(batch);
                    if (System.nanoTime() >= timedFrom) {
                        sentTimed.addAndGet(batch);
                    }
                }
            });
            worker.start();
            workers.add(worker);
        }
        for (Thread worker : workers) {
            worker.join();
        }
        double seconds = (System.nanoTime() - timedFrom) / 1e9;
        producer.shutdown();
        System.out.printf("{\"sent\": %d, \"timed\": %d, \"seconds\": %.3f, \"failed\": %d, \"first_failure\": %s}%n",
                          sent.get(), sentTimed.get(), seconds, failed.get(), JSON.toJSONString(firstFailure.get()));
    }

    private static void sleep(long nanos) {
        try {
            TimeUnit.NANOSECONDS.sleep(nanos);
        } catch (InterruptedException exc) {
            Thread.currentThread().interrupt();
        }
    }
}
