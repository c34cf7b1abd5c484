"""fashionbn: does BatchNorm help a small MLP on FashionMNIST, and by how much?"""
