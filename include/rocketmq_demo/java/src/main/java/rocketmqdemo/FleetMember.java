package rocketmqdemo;

import com.alibaba.fastjson.JSON;
import com.alibaba.fastjson.JSONObject;
import com.alibaba.fastjson.serializer.SerializerFeature;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.UncheckedIOException;
import java.io.Writer;
import java.math.BigDecimal;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.impl.factory.MQClientInstance;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.protocol.heartbeat.MessageModel;

/**
 * One member of the demo fleet on the official Apache RocketMQ Java client, a twin of
 * rocketmq_demo/member.py (the C++ client): same options, same config following, same
 * JSON-lines log, so the fleet's accounting counts both alike.
 *
 * <p>Without --config-url no name-server address is set, so the client's own address service
 * decides (-Drocketmq.namesrv.domain and .subgroup: fetched at start, then 10 s later and every
 * 2 minutes). The "cluster" of each entry is then the name-server address list the client
 * instance holds at that moment (MQClientAPIImpl.getNameServerAddressList, sorted, ";"-joined),
 * and a "switch" entry is written whenever that list changes. The client keeps its instance and
 * only re-routes at its next topic-route poll (every 30 s), so for up to 30 s the label names the
 * new name server while sends still go to the old cluster's brokers.
 */
public final class FleetMember {
    private static final String USAGE = "FleetMember [--config-url URL] --member ID --role producer|consumer"
            + " --group G --topic T --log FILE [--rate 20]";
    private static final Set<String> OPTIONS = Set.of("config-url", "member", "role", "group", "topic", "log", "rate");

    private final String configUrl;
    private final String member;
    private final String role;
    private final String group;
    private final String topic;
    private final double rate;
    private final Writer log;
    private final HttpClient http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(2)).build();
    /** Counted down by the shutdown hook (SIGTERM); the main loop then stops the client. */
    private final CountDownLatch stop = new CountDownLatch(1);
    /** Counted down when the main loop is over, so the shutdown hook can wait for "stopped". */
    private final CountDownLatch done = new CountDownLatch(1);
    private volatile DefaultMQProducer producer;
    private volatile DefaultMQPushConsumer consumer;
    private String namesrv;
    private String cluster;
    private int incarnation;
    private long seq;

    private FleetMember(Map<String, String> opts) throws IOException {
        configUrl = opts.get("config-url");
        member = opts.get("member");
        role = opts.get("role");
        group = opts.get("group");
        topic = opts.get("topic");
        rate = Double.parseDouble(opts.get("rate"));
        log = new OutputStreamWriter(new FileOutputStream(opts.get("log"), true), StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        FleetMember member = new FleetMember(parse(args));
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            member.stop.countDown();
            try {
                member.done.await(30, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
                // the JVM is going down either way
            }
        }, "fleet-member-stop"));
        try {
            member.run();
        } catch (Exception exc) {
            exc.printStackTrace();
            System.exit(1); // the client's non-daemon threads would keep a broken member alive
        }
    }

    private static Map<String, String> parse(String[] args) {
        Map<String, String> opts = new HashMap<>(Map.of("rate", "20"));
        if (args.length % 2 != 0) {
            usage("every option takes one value");
        }
        for (int i = 0; i < args.length; i += 2) {
            String name = args[i].startsWith("--") ? args[i].substring(2) : args[i];
            if (!OPTIONS.contains(name)) {
                usage("unknown option " + args[i]);
            }
            opts.put(name, args[i + 1]);
        }
        for (String required : List.of("member", "role", "group", "topic", "log")) {
            if (!opts.containsKey(required)) {
                usage("missing --" + required);
            }
        }
        if (!Set.of("producer", "consumer").contains(opts.get("role"))) {
            usage("--role is producer or consumer");
        }
        return opts;
    }

    private static void usage(String problem) {
        System.err.println("usage: " + USAGE + "\n" + problem);
        System.exit(2);
    }

    private void run() throws Exception {
        try {
            if (configUrl == null) {
                startClient();
            }
            long nextPoll = System.nanoTime();
            while (stop.getCount() > 0) {
                if (System.nanoTime() - nextPoll >= 0) {
                    follow();
                    nextPoll = System.nanoTime() + 500_000_000L;
                }
                if (producer != null) {
                    produceOne();
                    stop.await((long) (1000 / rate), TimeUnit.MILLISECONDS);
                } else {
                    stop.await(200, TimeUnit.MILLISECONDS);
                }
            }
            stopClient();
            write("stopped", "member", member);
        } finally {
            done.countDown();
        }
    }

    /** With a config service: restart the client on a new name server; without: note address changes. */
    private void follow() throws Exception {
        if (configUrl == null) {
            String now = addressInUse();
            if (!Objects.equals(now, cluster)) {
                cluster = now;
                write("switch", "cluster", cluster, "member", member);
            }
            return;
        }
        JSONObject config = fetchConfig();
        if (config != null && !config.getString("namesrv").equals(namesrv)) {
            stopClient();
            namesrv = config.getString("namesrv");
            cluster = config.getString("cluster");
            startClient();
            write("switch", "cluster", cluster, "member", member);
        }
    }

    private JSONObject fetchConfig() throws InterruptedException {
        HttpRequest request = HttpRequest.newBuilder(URI.create(configUrl + "/members/" + member))
                .timeout(Duration.ofSeconds(2)).build();
        try {
            HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
            return response.statusCode() == 200 ? JSON.parseObject(response.body()) : null;
        } catch (IOException exc) {
            return null;
        }
    }

    private void startClient() throws Exception {
        incarnation++;
        if (role.equals("producer")) {
            DefaultMQProducer client = new DefaultMQProducer(group);
            if (namesrv != null) {
                client.setNamesrvAddr(namesrv);
            }
            client.start();
            producer = client;
            return;
        }
        DefaultMQPushConsumer client = new DefaultMQPushConsumer(group);
        if (namesrv != null) {
            client.setNamesrvAddr(namesrv);
        }
        client.setInstanceName(member + "-" + incarnation);
        client.setMessageModel(MessageModel.CLUSTERING);
        client.subscribe(topic, "*");
        String configured = cluster;
        client.registerMessageListener((MessageListenerConcurrently) (msgs, context) -> {
            for (MessageExt msg : msgs) {
                write("recv", "key", msg.getKeys(), "group", group, "cluster", label(configured), "member", member,
                        "queue", msg.getQueueId(), "offset", msg.getQueueOffset(), "broker", msg.getBrokerName());
            }
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        consumer = client; // before start: the first receipts already ask it for its address
        client.start();
    }

    private void stopClient() {
        if (producer != null) {
            producer.shutdown();
            producer = null;
        }
        if (consumer != null) {
            consumer.shutdown();
            consumer = null;
        }
    }

    private void produceOne() {
        String key = member + "-" + seq;
        Message msg = new Message(topic, key.getBytes(StandardCharsets.UTF_8));
        msg.setKeys(key);
        try {
            SendResult result = producer.send(msg);
            seq++;
            write("sent", "key", key, "cluster", label(cluster), "msg_id", result.getMsgId(),
                    "broker", result.getMessageQueue().getBrokerName(), "queue", result.getMessageQueue().getQueueId(),
                    "offset", result.getQueueOffset());
        } catch (Exception exc) {
            String error = String.valueOf(exc);
            write("fail", "key", key, "cluster", label(cluster), "error", error.substring(0, Math.min(200, error.length())));
        }
    }

    /** The config service's cluster name, or without one the address the client itself uses. */
    private String label(String configured) {
        return configUrl != null ? configured : addressInUse();
    }

    private String addressInUse() {
        DefaultMQProducer p = producer;
        DefaultMQPushConsumer c = consumer;
        MQClientInstance instance = p != null ? p.getDefaultMQProducerImpl().getmQClientFactory()
                : c != null ? c.getDefaultMQPushConsumerImpl().getmQClientFactory() : null;
        if (instance == null) {
            return null;
        }
        List<String> addrs = instance.getMQClientAPIImpl().getNameServerAddressList();
        return addrs == null || addrs.isEmpty() ? null : String.join(";", new TreeSet<>(addrs));
    }

    private synchronized void write(String event, Object... fields) {
        Instant now = Instant.now();
        JSONObject entry = new JSONObject(true);
        entry.put("t", BigDecimal.valueOf(now.getEpochSecond() * 1_000_000L + now.getNano() / 1000, 6));
        entry.put("e", event);
        for (int i = 0; i < fields.length; i += 2) {
            entry.put((String) fields[i], fields[i + 1]);
        }
        try {
            log.write(JSON.toJSONString(entry, SerializerFeature.WriteMapNullValue) + "\n");
            log.flush();
        } catch (IOException exc) {
            throw new UncheckedIOException(exc);
        }
    }
}
