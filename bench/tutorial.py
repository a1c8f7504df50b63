"""The tutorial's script (../shared/reference/mnist_tutorial.md) as written, to time side by side.

Changes, each needed for it to run here and nothing else: its `//` comments are `#` comments,
`root` comes from MNISTLAB_DATA (default "./data", as in the tutorial), `epoch` from EPOCHS
(default 10, as in the tutorial), and `st_idx`, which the tutorial uses without defining, is 0.
"""

import os

import torch
import torch.nn as nn  # 用于搭建神经网络
import torch.optim as optim  # 导入优化器
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

batch_size = 64
epoch = int(os.environ.get("EPOCHS", "10"))
learning_rate = 1e-3
root = os.environ.get("MNISTLAB_DATA", "./data")
st_idx = 0

training_data = datasets.MNIST(
    root=root,  # 储存位置
    train=True,  # 是否用于训练
    download=True,  # 如果没有数据是否自动下载
    transform=ToTensor(),  # 预处理方式
)

test_data = datasets.MNIST(root=root, train=False, download=True, transform=ToTensor())

training_dataloader = DataLoader(dataset=training_data, batch_size=batch_size, shuffle=True)
test_dataloader = DataLoader(dataset=test_data, batch_size=batch_size, shuffle=True)


class NN(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):  # 在神经网络上运行的方式
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


device = (
    "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
)

model = NN().to(device)  # 在合适的设备上创建模型

criterion = nn.CrossEntropyLoss()
optimizer = optim.Adam(model.parameters(), lr=learning_rate)


def train_loop(dataloader, model, ep):
    model.train()
    for i, (img, label) in enumerate(dataloader):
        img, label = img.to(device), label.to(device)  # 保证设备统一
        optimizer.zero_grad()  # 优化器清空梯度
        res = model(img)  # 在模型上运行
        loss = criterion(res, label)  # 求loss
        loss.backward()  # 求梯度
        optimizer.step()  # 优化参数
        if (i + 1) % 100 == 0:
            print(
                f"Epoch [{ep + 1:>3d} / {epoch:>3d}] Step [{i + 1:>6d} / {len(dataloader):>6d}] "
                f"Loss: {loss:>7f}"
            )


def test_loop(dataloader, model):
    model.eval()
    test_loss, correct = 0, 0
    with torch.no_grad():
        for img, label in dataloader:
            img, label = img.to(device), label.to(device)
            res = model(img)
            # 求正确率和loss
            test_loss += criterion(res, label).item()
            correct += (res.argmax(1) == label).type(torch.float).sum().item()
    test_loss /= len(dataloader.dataset)
    correct /= len(dataloader.dataset)
    print(f"Test Error: \n Accuracy : {(correct * 100):>0.1f} % ,Avg loss:{test_loss:>8f} \n")


for i in range(st_idx, epoch):
    train_loop(training_dataloader, model, i)
    test_loop(test_dataloader, model)

torch.save(model.state_dict(), "./model.pth")
